"""What a process imports before it works: the seconds a user waits for nothing.

Importing MONAI takes ~1.5-2 s (it loads its data, transforms and apps packages); only training's label-driven Dice
loss needs it, so a registration must not import it, with label maps or without (HD95 is computed as MONAI does,
without MONAI: ``evaluate/metrics.py``). ``shmoareg --help`` needs neither torch (~1.8 s) nor MONAI.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from test_reliability_support import good_pair, labels_like, write

ROOT = Path(__file__).resolve().parents[1]


def _imported(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter; return which of torch and MONAI it imported, and what it printed."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in ('torch', 'monai')}}))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_imports_neither_torch_nor_monai(tmp_path: Path) -> None:
    code = "from SHMoAReg.cli.main import build_parser\nbuild_parser().format_help()"
    assert _imported(code, tmp_path) == {"torch": False, "monai": False}


def test_registration_never_imports_monai(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path)
    labels = write(labels_like(sitk.ReadImage(str(fixed))), tmp_path / "labels.nii.gz")
    run = (f"from SHMoAReg import register\n"
           f"result = register({str(fixed)!r}, {str(moving)!r}, iterations=2, affine=False, device='cpu'{{extra}})\n"
           f"assert ('hd95_mm' in result.report['metrics']) == {{labelled}}, result.report['metrics'].keys()")
    assert _imported(run.format(extra="", labelled=False), tmp_path) == {"torch": True, "monai": False}
    with_labels = run.format(extra=f", fixed_labels={str(labels)!r}, moving_labels={str(labels)!r}", labelled=True)
    assert _imported(with_labels, tmp_path) == {"torch": True, "monai": False}
