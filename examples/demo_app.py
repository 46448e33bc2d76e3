"""The demo FastAPI app served by `make demo`."""

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Something to wait for: the hardened worker accepts only once this has finished.
    await asyncio.sleep(0.5)
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def index(request: Request) -> dict:
    return {
        "hello": "world",
        "pid": os.getpid(),
        "client": request.client.host if request.client else None,
    }


@app.get("/slow")
async def slow(seconds: float = 2.0) -> dict:
    await asyncio.sleep(seconds)
    return {"slept": seconds}
