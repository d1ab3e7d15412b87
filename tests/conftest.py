import os
import sys
from pathlib import Path

# tests/ holds helper modules (core_plugins) imported by several test files.
sys.path.insert(0, str(Path(__file__).parent))
# Tests never reach a model hub: everything they load is built or bundled locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
