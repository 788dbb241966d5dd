"""short-transformers' angular-distance table on the blocks written by ``bench_scoring.py st-export``.

Runs in its OWN venv (short-transformers 1.0.0 needs transformers <= 4.53), e.g. /tmp/st-venv; see
bench/RESULTS.md (Scoring). Writes ``st_result.json`` (the table, seconds, versions) beside the blocks.

Usage: ``/tmp/st-venv/bin/python bench/st_angular.py /tmp/bench-scoring``
"""

import json
import sys
import time
from pathlib import Path

import torch
import transformers
from short_transformers import ShortTransformer


def main(folder: str) -> None:
    folder = Path(folder)
    ids = torch.load(folder / "st_blocks.pt")
    model = ShortTransformer.from_pretrained(str(folder / "smollm2-v4"), torch_dtype=torch.float32)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for row in ids:            # its distance functions take one example at a time (batch_size=1)
            model(input_ids=row[None], use_cache=False)
    seconds = time.perf_counter() - start
    result = {"result": model.memory.result.tolist(), "seconds": seconds, "tokens": int(ids.numel()),
              "transformers": transformers.__version__, "torch": torch.__version__,
              "rope_theta": getattr(model.config, "rope_theta", None)}
    (folder / "st_result.json").write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k != "result"}))


if __name__ == "__main__":
    main(sys.argv[1])
