"""Each rule's runtime and memory, summarised from Snakemake benchmark files (tests/test_workflow.py checks the
files a real run writes)."""
import pytest

from lmadapt.io import UnreadableFile
from lmadapt.runtimes import read_benchmarks, summarise, write_runtimes

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(path, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join("\t".join(str(v) for v in row) + "\n" for row in rows))


def test_jobs_are_summarised_per_rule(tmp_path):
    folder = tmp_path / "benchmarks"
    write(folder / "extract/tiny/rte/none/test.tsv", (30.0, "0:00:30", 900.5, 2000, 1, 1, 0, 0, 90, 27.0))
    write(folder / "extract/tiny/rte/none/train_k2_seed1.tsv", (10.0, "0:00:10", 500.0, 2000, 1, 1, 0, 0, 90, 9.0))
    write(folder / "extract/tiny/rte/fewshot_seed1/test.tsv", (20.0, "0:00:20", 700.0, 2000, 1, 1, 0, 0, 90, 18.0))
    # ended before Snakemake's first memory sample; a repeated job counts by its mean time
    write(folder / "bow/rte/k2_seed1.tsv", (0.4, "0:00:00", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA"),
          (0.6, "0:00:00", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA"))
    jobs = read_benchmarks(folder)
    assert sorted(jobs["job"]) == ["bow/rte/k2_seed1", "extract/tiny/rte/fewshot_seed1/test",
                                   "extract/tiny/rte/none/test", "extract/tiny/rte/none/train_k2_seed1"]
    summary = summarise(jobs)
    assert list(summary.index) == ["extract", "bow"]  # the longest in total first
    extract, bow = summary.loc["extract"], summary.loc["bow"]
    assert (extract["jobs"], extract["median_s"], extract["max_s"], extract["peak_mb"]) == (3, 20.0, 30.0, 900.5)
    assert extract["wall_h"] == pytest.approx(60 / 3600) and extract["cpu_h"] == pytest.approx(54 / 3600)
    assert bow["jobs"] == 1 and bow["median_s"] == pytest.approx(0.5) and bow["unsampled"] == 1
    write_runtimes(folder, tmp_path / "runtimes.md")
    text = (tmp_path / "runtimes.md").read_text()
    assert "From the benchmark files of 4 jobs under" in text
    assert "| extract | 3 | 20.0 | 30.0 | 0.017 | 0.015 | 900 | 0 |" in text
    assert "| bow | 1 | 0.5 | 0.5 | 0.000 | – | – | 1 |" in text


def test_no_benchmarks_yet_and_a_foreign_file(tmp_path):
    write_runtimes(tmp_path / "none", tmp_path / "runtimes.md")
    assert "No benchmark files" in (tmp_path / "runtimes.md").read_text()
    bad = tmp_path / "benchmarks/probe/x.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("wall\tmemory\n1\t2\n")
    message = r"probe/x\.tsv: not a Snakemake benchmark file \(no s, max_rss, cpu_time\)"
    with pytest.raises(UnreadableFile, match=message):
        read_benchmarks(tmp_path / "benchmarks")
