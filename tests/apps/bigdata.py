"""An app that loads a large dataset at import: with --preload it lives in the master and is
shared copy-on-write with every worker (BIGDATA_MIB, default 200)."""

import os

from testapp import app as testapp

DATASET = bytearray(os.urandom(1024)) * (int(os.environ.get("BIGDATA_MIB", "200")) * 1024)
app = testapp
