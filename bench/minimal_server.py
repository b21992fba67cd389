"""The baseline: a minimal hand-written FastAPI endpoint doing the same torch forward.

What a team would write in ten minutes: load the weights, normalize, forward, softmax, answer.
No batching, no logging, no metrics, no keys. Run: python bench/minimal_server.py VERSION_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI

from modelloop.registry.artifact import load_artifact

folder, port = Path(sys.argv[1]), int(sys.argv[2])
loaded = load_artifact(folder, backend_override="torch")
model, norm, fmt, names = loaded.model.eval(), loaded.normalizer, loaded.fmt, loaded.class_names
mean = torch.tensor(norm.mean_).view(1, -1, 1, 1)
std = torch.tensor(norm.std_).view(1, -1, 1, 1)
app = FastAPI()


@app.post("/predict")
def predict(body: dict) -> dict:
    x = torch.tensor(body["pixels"], dtype=torch.float32).view(1, fmt.channels, fmt.height, fmt.width)
    with torch.inference_mode():
        probs = torch.softmax(model((x - mean) / std), dim=1)[0].tolist()
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"label": names[best], "scores": dict(zip(names, probs, strict=True))}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
