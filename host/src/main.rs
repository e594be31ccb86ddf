//! The `latent` binary: see `latent --help`.

fn main() {
    std::process::exit(latent_host::cli::main());
}
