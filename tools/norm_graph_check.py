"""Check `lib.fast_dora`'s cuda_graph="auto" on a CUDA GPU: one bf16 DoRA layer (4096 x 1024, r=8)
refreshes its norm through the CUDA graph with the whole device, and eagerly with the allocator
capped to 1% of it (where the 8 MiB weight exceeds GRAPH_POOL_SHARE); the norm against ||W + s B A||
in float32 either way. Prints JSON.

    PYTHONPATH=.site:. python tools/norm_graph_check.py
"""
import json

import torch
from peft import LoraConfig, get_peft_model

import lib.fast_dora as fd


class OneLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(1024, 4096, bias=False)

    def forward(self, x):
        return self.q_proj(x)


def main() -> None:
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    for fraction in (1.0, 0.01):
        torch.cuda.set_per_process_memory_fraction(fraction)
        torch.manual_seed(0)
        config = LoraConfig(r=8, target_modules=["q_proj"], use_dora=True)
        model = get_peft_model(OneLayer().cuda().to(torch.bfloat16), config)
        fd.use_fast_dora(model)
        layer = fd.fast_dora_layers(model)[0][0]
        with torch.no_grad():
            layer.lora_B["default"].weight.normal_(0, 0.05)
        x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
        model(x).float().sum().backward()
        hook = fd.norm_refresh_hook(model)
        a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
        reference = (layer.get_base_layer().weight.float() + layer.scaling["default"] * b @ a).norm(dim=1)
        error = float((fd.dora_weight_norm(layer) - reference).norm() / reference.norm())
        out[str(fraction)] = {"cuda_graph": hook.cuda_graph, "graph_captured": hook.graph is not None,
                              "capacity_gib": fd.allocator_capacity(x.device) / 2**30, "norm_rel_error": error}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
