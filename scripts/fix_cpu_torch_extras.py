"""Make torchvision / torchaudio harmless next to a CPU-only torch.

Why this exists: on PyPI, torchvision and torchaudio only ship CUDA builds for
recent torch versions.  LLaMA-Factory depends on both, so pip installs them
beside the CPU torch wheel, and then:
  * ``import torchvision`` fails ("operator torchvision::nms does not exist"),
    and transformers imports it whenever it is installed, which breaks every
    model import;
  * ``import torchaudio`` fails to load its C extension, and
    ``llamafactory.data.mm_plugin`` imports torchaudio at module level, so even
    ``llamafactory-cli version`` crashes.
transformers treats torchvision as optional, so we uninstall it; torchaudio's
pure-Python part imports fine once its compiled libraries are moved aside
(nothing here uses audio).  Any later ``pip install`` may bring torchvision back,
so ``make setup`` runs this after every install.  On a machine whose torch is a
CUDA build, the CUDA wheels work and this script changes nothing.

Usage: python scripts/fix_cpu_torch_extras.py   (with the target environment's python)
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path


def _imports(module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    return probe.returncode == 0


def main() -> int:
    import torch

    if torch.version.cuda is not None:
        return 0
    if importlib.util.find_spec("torchvision") is not None and not _imports("torchvision"):
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)
        print("fix_cpu_torch_extras: uninstalled torchvision (a CUDA-only build that cannot load with CPU torch)")
    spec = importlib.util.find_spec("torchaudio")
    if spec is not None and not _imports("torchaudio"):
        lib = Path(spec.origin).parent / "lib"
        aside = lib.parent / "lib_disabled_on_cpu"
        aside.mkdir(exist_ok=True)
        for so in lib.glob("*.so"):
            shutil.move(str(so), aside / so.name)
        if not _imports("torchaudio"):
            print("fix_cpu_torch_extras: torchaudio still fails to import", file=sys.stderr)
            return 1
        print("fix_cpu_torch_extras: moved torchaudio's CUDA-built libraries aside (audio is not used)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
