//! The `latent` command line.

use crate::plugins::{self, Registry};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// latent: self-supervised representation learning with plugin objectives, encoders and augmentations
#[derive(Parser, Debug)]
#[command(name = "latent", version, about)]
pub struct Cli {
    /// Extra directory to load plugins from (searched before LATENT_PLUGIN_PATH and the default)
    #[arg(long = "plugin-dir", global = true)]
    pub plugin_dirs: Vec<PathBuf>,
    /// The command
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the plugins on the search path
    Plugins {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Say exactly why a library file can or cannot be loaded as a plugin
    CheckPlugin {
        /// The library file
        file: PathBuf,
        /// Also run each objective and encoder: gradients against finite differences,
        /// determinism, finite losses on degenerate input
        #[arg(long)]
        deep: bool,
    },
    /// Train an encoder (no CONFIG: SimCLR + resnet-mini on the embedded MNIST subset)
    Train {
        /// TOML config file (see examples/configs/)
        config: Option<PathBuf>,
        /// Override a config key, e.g. --set train.epochs=2 --set objective.config.temperature=0.1
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run directory (default: runs/<objective>-<encoder>-<time>)
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in --out from its latest checkpoint
        #[arg(long)]
        resume: bool,
        /// Stop with a checkpoint once this many steps are done (as Ctrl-C would)
        #[arg(long, value_name = "STEPS")]
        stop_after: Option<u64>,
    },
    /// Check that the encoder computes on a GPU what it computes on the CPU: the same weights
    /// and batch through both, features, loss, gradients and running statistics compared
    CheckDevice {
        /// TOML config file (none: the default experiment)
        config: Option<PathBuf>,
        /// Override a config key, as for `latent train`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The device compared with the CPU
        #[arg(long, default_value = "cuda:0")]
        device: String,
        /// Images per view
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// The largest relative L2 error allowed (‖device − cpu‖ / ‖cpu‖); rows that are
        /// ill-conditioned under rounding allow 10 or 100 times it, and print their own
        #[arg(long, default_value_t = 1e-3)]
        tol: f64,
        /// Perturb the device side's weights by this relative amount before comparing: with
        /// `--device cpu` and 1e-7, the rounding noise each row must tolerate
        #[arg(long, default_value_t = 0.0)]
        perturb: f64,
        /// Also compare every gradient and parameter alone, in the encoder's order
        #[arg(long)]
        verbose: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a trained encoder: kNN, linear probe, and two baselines
    Eval {
        /// A run directory, checkpoint directory or model.safetensors
        run: PathBuf,
        /// Evaluate on another dataset (same sources as data.source)
        #[arg(long)]
        data: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Write a trained encoder's features of a dataset as .npy (labels beside as FILE.labels.npy)
    Embed {
        /// A run directory, checkpoint directory or model.safetensors
        checkpoint: PathBuf,
        /// Dataset (default: the run's)
        #[arg(long)]
        data: Option<String>,
        /// train, test or all
        #[arg(long, default_value = "test")]
        split: String,
        /// Output .npy file
        #[arg(long)]
        out: PathBuf,
    },
    /// Draw source images beside their augmented views, exactly as the loader makes them
    Views {
        /// TOML config file (none: the default experiment)
        config: Option<PathBuf>,
        /// Override a config key, as for `latent train`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The PNG to write (the tiles' images and seeds go to the .json beside it)
        #[arg(long, default_value = "views.png")]
        out: PathBuf,
        /// Source images (rows): the first of the first batch
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// Epochs whose views are drawn (columns: views x epochs)
        #[arg(long, default_value_t = 3)]
        epochs: u64,
        /// Pixel enlargement
        #[arg(long, default_value_t = 3)]
        scale: u32,
    },
    /// Draw test images beside their nearest neighbours in the memory bank under a trained encoder
    Neighbours {
        /// A run directory, checkpoint directory or model.safetensors
        run: PathBuf,
        /// Another dataset (same sources as data.source)
        #[arg(long)]
        data: Option<String>,
        /// The PNG to write (queries, neighbours, labels and similarities go to the .json beside it)
        #[arg(long, default_value = "neighbours.png")]
        out: PathBuf,
        /// Query images, spread evenly over the test split
        #[arg(long, default_value_t = 10)]
        queries: usize,
        /// Neighbours per query
        #[arg(long, default_value_t = 8)]
        k: usize,
        /// Pixel enlargement
        #[arg(long, default_value_t = 3)]
        scale: u32,
    },
    /// Draw a 2-D t-SNE map of the test embeddings by class, beside the random-init encoder's
    Map {
        /// A run directory, checkpoint directory or model.safetensors
        run: PathBuf,
        /// Another dataset (same sources as data.source)
        #[arg(long)]
        data: Option<String>,
        /// The PNG to write (every point's index, label and position go to the .json beside it)
        #[arg(long, default_value = "map.png")]
        out: PathBuf,
        /// Largest number of test images mapped (evenly spaced over the split)
        #[arg(long, default_value_t = 2000)]
        max_points: usize,
        /// t-SNE perplexity
        #[arg(long, default_value_t = 30.0)]
        perplexity: f32,
        /// t-SNE iterations
        #[arg(long, default_value_t = 1000)]
        epochs: usize,
    },
    /// List the runs under a directory: method, encoder, data, steps, kNN, probe, time, status
    Runs {
        /// The directory (default: runs)
        #[arg(default_value = "runs")]
        dir: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Write a plugin crate skeleton (Cargo.toml, src/lib.rs, README.md) that builds, loads and trains as it is
    NewPlugin {
        /// objective, encoder or augmentation
        #[arg(long, value_enum)]
        kind: crate::plugins::new_plugin::Kind,
        /// Plugin name (lowercase, digits, dashes), e.g. my-first-loss
        name: String,
        /// Parent directory: the crate is written to DIR/NAME (default: the current directory)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The sdk/ directory of a latent checkout (default: the one this binary was built from)
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    crate::memory::reexec_with_huge_pages();
    let kept = crate::memory::keep_freed_memory();
    let cli = Cli::parse();
    // under mpirun: join the other ranks (before any thread pool starts)
    let world = match crate::dist::init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    init_tracing(world.is_root());
    if world.is_distributed() && !matches!(cli.command, Command::Train { .. }) {
        eprintln!(
            "error: rank {} of {}: only `latent train` runs on several ranks; run this command without mpirun",
            world.rank(),
            world.size()
        );
        world.abort(2);
    }
    tracing::debug!("glibc keeps freed memory for reuse: {kept} (host/src/memory.rs)");
    match run(cli) {
        Ok(code) => {
            crate::dist::finalize();
            code
        }
        Err(e) if world.is_distributed() => {
            // one rank's error ends every rank (MPI_Abort), so none waits for it forever
            eprintln!("error: rank {} of {}: {e:#}", world.rank(), world.size());
            world.abort(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// The log on stderr (`LATENT_LOG`); ranks other than 0 of a data-parallel run say only
/// warnings and errors, unless `LATENT_LOG` asks for more.
fn init_tracing(root: bool) {
    let default = if root { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATENT_LOG")
        .unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .try_init();
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Plugins { json } => cmd_plugins(&cli.plugin_dirs, json),
        Command::CheckPlugin { file, deep } => cmd_check(&file, deep),
        Command::Train { config, sets, out, resume, stop_after } => {
            crate::train::run(crate::train::TrainArgs {
                config,
                sets,
                out,
                resume,
                stop_after,
                plugin_dirs: cli.plugin_dirs,
            })
        }
        Command::CheckDevice { config, sets, device, batch, tol, perturb, verbose, json } => {
            let reg = Registry::discover(&cli.plugin_dirs)?;
            let cfg = crate::config::Config::load(config.as_deref(), &sets)?;
            let rows = crate::device::check(&reg, &cfg, &device, batch, tol, perturb, verbose)?;
            let ok = rows.iter().all(|r| r.ok);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"device": device, "tol": tol, "ok": ok, "rows": rows})
                );
            } else {
                println!(
                    "{} against the cpu, encoder '{}', {} images per view (relative L2 error, its tolerance):",
                    device, cfg.encoder.plugin, batch
                );
                for r in &rows {
                    let mark = if r.ok { "ok  " } else { "FAIL" };
                    println!(
                        "  {mark} {:<60} {:.3e} ({:.0e})  {}",
                        r.what, r.rel_err, r.tol, r.worst
                    );
                }
                println!("{}", if ok { "agree" } else { "DISAGREE" });
            }
            Ok(if ok { 0 } else { 1 })
        }
        Command::Eval { run, data, json } => {
            let reg = Registry::discover(&cli.plugin_dirs)?;
            crate::eval::commands::eval(&reg, &run, data.as_deref(), json)?;
            Ok(0)
        }
        Command::Embed { checkpoint, data, split, out } => {
            let reg = Registry::discover(&cli.plugin_dirs)?;
            let (n, d) =
                crate::eval::commands::embed(&reg, &checkpoint, data.as_deref(), &split, &out)?;
            println!("wrote {n} x {d} features to {}", out.display());
            Ok(0)
        }
        Command::Views { config, sets, out, images, epochs, scale } => {
            let reg = Registry::discover(&cli.plugin_dirs)?;
            let args = crate::inspect::views::ViewsArgs {
                config,
                sets,
                out: out.clone(),
                images,
                epochs,
                scale,
            };
            let s = crate::inspect::views::run(&reg, &args)?;
            println!(
                "wrote {} ({} × {}): {} images of {} and their views in epochs 0 to {}; tiles and seeds in {}",
                out.display(), s.png.0, s.png.1, s.images.len(), s.dataset, epochs - 1, crate::inspect::json_path(&out).display()
            );
            Ok(0)
        }
        Command::Neighbours { run, data, out, queries, k, scale } => {
            let reg = Registry::discover(&cli.plugin_dirs)?;
            let args = crate::inspect::neighbours::NeighboursArgs {
                run,
                data,
                out: out.clone(),
                queries,
                k,
                scale,
            };
            let s = crate::inspect::neighbours::run(&reg, &args)?;
            let p = s.precision.map_or(String::new(), |p| {
                format!("; {:.1}% of the neighbours have the query's class", p * 100.0)
            });
            println!(
                "wrote {} ({} × {}): {} queries from {}, neighbours from {}{p}",
                out.display(),
                s.png.0,
                s.png.1,
                s.queries.len(),
                s.queries_from,
                s.memory_bank
            );
            Ok(0)
        }
        Command::Map { run, data, out, max_points, perplexity, epochs } => {
            let reg = Registry::discover(&cli.plugin_dirs)?;
            let args = crate::inspect::map::MapArgs {
                run,
                data,
                out: out.clone(),
                max_points,
                perplexity,
                epochs,
            };
            let s = crate::inspect::map::run(&reg, &args)?;
            let k = s.map_knn.map_or(String::new(), |(a, b)| {
                format!(
                    "; 10-NN in the map {:.1}% trained, {:.1}% random init",
                    a * 100.0,
                    b * 100.0
                )
            });
            println!(
                "wrote {} ({} × {}): {} images of {}, t-SNE {:.1} s{k}",
                out.display(),
                s.png.0,
                s.png.1,
                s.indices.len(),
                s.split,
                s.tsne_seconds
            );
            Ok(0)
        }
        Command::Runs { dir, json } => {
            let rows = crate::inspect::runs::run(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no runs under {}", dir.display());
            } else {
                print!("{}", crate::inspect::runs::table(&rows, &dir));
            }
            Ok(0)
        }
        Command::NewPlugin { kind, name, dir, sdk_path } => {
            crate::plugins::new_plugin::run(crate::plugins::new_plugin::NewPluginArgs {
                kind,
                name,
                dir,
                sdk_path,
            })
        }
    }
}

fn cmd_plugins(dirs: &[PathBuf], json: bool) -> Result<i32> {
    let reg = Registry::discover(dirs)?;
    if json {
        let plugins: Vec<serde_json::Value> = reg
            .entries
            .values()
            .map(|e| {
                let m = &e.manifest;
                serde_json::json!({
                    "name": m.name.as_str(),
                    "kind": m.kind.as_str(),
                    "version": m.version.as_str(),
                    "file": e.file.display().to_string(),
                    "description": m.description.as_str(),
                    "default_config": serde_json::from_str::<serde_json::Value>(&m.default_config).unwrap_or(serde_json::Value::Null),
                    "needs_labels": m.needs_labels,
                    "needs_target": m.needs_target,
                })
            })
            .collect();
        let failures: Vec<serde_json::Value> = reg
            .failures
            .iter()
            .map(|(f, e)| serde_json::json!({"file": f.display().to_string(), "error": e}))
            .collect();
        let search: Vec<String> = reg.search_path.iter().map(|p| p.display().to_string()).collect();
        let shadowed: Vec<serde_json::Value> = reg
            .shadowed
            .iter()
            .map(|(n, used, hidden)| serde_json::json!({"name": n, "used": used.display().to_string(), "shadowed": hidden.display().to_string()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"search_path": search, "plugins": plugins, "failures": failures, "shadowed": shadowed})
            )?
        );
        return Ok(0);
    }
    println!("search path:");
    for p in &reg.search_path {
        println!("  {}", p.display());
    }
    println!();
    println!("{:<16} {:<13} {:<8} {:<50} FILE", "NAME", "KIND", "VERSION", "DESCRIPTION");
    for e in reg.entries.values() {
        let m = &e.manifest;
        println!(
            "{:<16} {:<13} {:<8} {:<50} {}",
            m.name.as_str(),
            m.kind.as_str(),
            m.version.as_str(),
            m.description.as_str(),
            e.file.display()
        );
    }
    for (f, err) in &reg.failures {
        println!("\nnot loaded: {}\n  {err}", f.display());
    }
    for (name, used, hidden) in &reg.shadowed {
        println!("\nshadowed: {name} in {}\n  a plugin of the same name earlier on the search path is used: {}", hidden.display(), used.display());
    }
    Ok(0)
}

fn cmd_check(file: &std::path::Path, deep: bool) -> Result<i32> {
    let lib = match plugins::load_library(file) {
        Ok(lib) => lib,
        Err(e) => {
            println!("cannot load: {e:#}");
            return Ok(2);
        }
    };
    let ms = plugins::manifests(lib, file)?;
    println!("{}: ok, latent plugin library (ABI {})", file.display(), lib.abi_version());
    for m in &ms {
        println!("  {} ({}, version {}): {}", m.name, m.kind.as_str(), m.version, m.description);
    }
    if ms.iter().any(|m| m.kind == latent_abi::PluginKind::Encoder) {
        match crate::plugins::registry::load_device_fns(file) {
            Ok(Some(_)) => println!("  device calls: yes (its encoders may accept a GPU)"),
            Ok(None) => println!(
                "  device calls: none (built before ABI 0.3.1): its encoders run on the cpu"
            ),
            Err(e) => {
                println!("cannot load its device calls: {e:#}");
                return Ok(2);
            }
        }
    }
    if deep && !crate::plugins::deep_check::run(lib, &ms)? {
        return Ok(1);
    }
    Ok(0)
}
