"""A gunicorn config whose environment a test rewrites before a HUP (RELOAD_ENV_FILE, JSON)."""

import json
import os

raw_env = [f"{k}={v}" for k, v in json.load(open(os.environ["RELOAD_ENV_FILE"])).items()]
