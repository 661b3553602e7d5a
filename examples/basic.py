"""Placeholder main job until the engine lands: plugins and detection on the default model."""

import subprocess
import sys
from pathlib import Path

bin_dir = Path(sys.executable).parent
subprocess.run([bin_dir / "adaptrix", "plugins", "list"], check=True)
subprocess.run([bin_dir / "adaptrix", "detect"], check=True)
