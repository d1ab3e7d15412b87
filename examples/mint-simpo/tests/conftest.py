import importlib.util
import os
import sys
from pathlib import Path

# Run from MINT's checkout without installing the plugin first (pip install -e . is still the way
# to make `mint` see it: entry points come from the installed metadata).
if importlib.util.find_spec("mint_simpo") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
