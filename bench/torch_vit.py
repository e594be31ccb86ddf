"""The `vit` plugin's ViT in PyTorch, for the reference rows of bench/torch_train_mnist5k.py.

The same network as plugins/encoders/vit (and its fixture generator
plugins/encoders/vit/tests/fixtures/vit.py): timm's VisionTransformer layout (patch conv, class
token, position embeddings, pre-norm blocks with qkv-bias attention and a GELU MLP, LayerNorm
eps 1e-6, final LayerNorm, class-token output), timm's initialisation as the plugin's (every
weight, the class token and the position embeddings trunc-normal std 0.02 in [-2, 2], biases 0,
LayerNorms 1 / 0), and drop-path per residual branch at timm's linspace(0, drop_path, depth).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"vit-mini": (64, 4, 4), "vit-tiny": (192, 12, 3)}


def trunc(t):
    return nn.init.trunc_normal_(t, std=0.02, a=-2.0, b=2.0)


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, 1, device=x.device).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, drop):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, hidden)
        self.mlp.fc2 = nn.Linear(hidden, dim)
        self.drop1, self.drop2 = DropPath(drop), DropPath(drop)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.drop1(self.attn.proj(a))
        return x + self.drop2(self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x)))))


class ViT(nn.Module):
    def __init__(self, preset="vit-mini", cin=1, size=28, patch=4, mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        dim, depth, heads = PRESETS[preset]
        self.patch = patch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cin, dim, patch, patch)
        grid = (size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid, dim))
        rates = [0.0] * depth if depth < 2 else [drop_path * i / (depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, int(dim * mlp_ratio), r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "norm" in name:
                    p.fill_(1.0)
                else:
                    trunc(p)

    def without_drop_path(self):
        """DINO's teacher: the same network with drop-path off."""
        for m in self.modules():
            if isinstance(m, DropPath):
                m.p = 0.0
        return self

    def forward(self, x):
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return self.norm(x)[:, 0]
