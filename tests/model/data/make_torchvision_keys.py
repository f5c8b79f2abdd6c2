"""Regenerate resnet{18,50}_keys.json: torchvision's `resnet18()` / `resnet50()` state_dict
(key, shape) lists in state_dict order, written from torchvision's architecture definition
(torchvision/models/resnet.py) without importing torchvision or pipeline.model.

Run: python tests/model/data/make_torchvision_keys.py   (rewrites the JSON files beside it)
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def _bn(prefix: str, c: int) -> list[tuple[str, list[int]]]:
    return [(f"{prefix}.weight", [c]), (f"{prefix}.bias", [c]), (f"{prefix}.running_mean", [c]),
            (f"{prefix}.running_var", [c]), (f"{prefix}.num_batches_tracked", [])]


def torchvision_keys(bottleneck: bool, layers: list[int]) -> list[tuple[str, list[int]]]:
    exp = 4 if bottleneck else 1
    out: list[tuple[str, list[int]]] = [("conv1.weight", [64, 3, 7, 7])] + _bn("bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip([64, 128, 256, 512], layers), start=1):
        stride = 1 if li == 1 else 2
        for b in range(blocks):
            p = f"layer{li}.{b}"
            if bottleneck:
                out += [(f"{p}.conv1.weight", [planes, inplanes, 1, 1])] + _bn(f"{p}.bn1", planes)
                out += [(f"{p}.conv2.weight", [planes, planes, 3, 3])] + _bn(f"{p}.bn2", planes)
                out += [(f"{p}.conv3.weight", [planes * 4, planes, 1, 1])]
                out += _bn(f"{p}.bn3", planes * 4)
            else:
                out += [(f"{p}.conv1.weight", [planes, inplanes, 3, 3])] + _bn(f"{p}.bn1", planes)
                out += [(f"{p}.conv2.weight", [planes, planes, 3, 3])] + _bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * exp):
                out += [(f"{p}.downsample.0.weight", [planes * exp, inplanes, 1, 1])]
                out += _bn(f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    out += [("fc.weight", [1000, 512 * exp]), ("fc.bias", [1000])]
    return out


if __name__ == "__main__":
    for name, bottleneck, layers in (("resnet18", False, [2, 2, 2, 2]),
                                     ("resnet50", True, [3, 4, 6, 3])):
        keys = torchvision_keys(bottleneck, layers)
        text = "[\n" + ",\n".join(json.dumps(list(entry)) for entry in keys) + "\n]\n"
        (HERE / f"{name}_keys.json").write_text(text)
        print(name, len(keys), "entries")
