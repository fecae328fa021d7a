"""The `probe` and `bow` stages: classifiers on activations, and the bag-of-words baseline on raw text.

probe: for every layer and pooling of one activation file, a logistic regression (standardised features, C by
cross-validation on the training sample only) and an MLP (study 1's "simple DNN": early stopping on a held-out
part of the training sample), evaluated on the test and out-of-domain activations. The few-shot prefix's
demonstrations come from the seed's demonstration pool, never from a training sample, so the probes with and
without the prompt train on the same rows.
bow: CountVectorizer or tf-idf + the same logistic regression on the samples' text.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .io import activation_column, read_table, write_json
from .metrics import Cost, classification_record, finish, group_columns, provenance
from .sample import META_KEY, validation_split
from .settings import Settings


def fit_logreg(features, y, Cs: list[float], folds: int, seed: int, scale: bool):
    """Logistic regression with C chosen by stratified CV on the training data; returns (model, C)."""
    steps = ([StandardScaler()] if scale else []) + [LogisticRegression(max_iter=5000)]
    pipeline = make_pipeline(*steps)
    folds = min(folds, int(np.bincount(y).min()))
    if folds < 2 or len(Cs) == 1:
        pipeline.set_params(logisticregression__C=Cs[len(Cs) // 2])
        return pipeline.fit(features, y), Cs[len(Cs) // 2]
    search = GridSearchCV(pipeline, {"logisticregression__C": Cs},
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    search.fit(features, y)
    return search.best_estimator_, search.best_params_["logisticregression__C"]


class MLPProbe:
    """Standardise, one hidden layer, dropout, AdamW; the epoch with the best held-out loss is kept."""

    def __init__(self, hidden: int, dropout: float, weight_decay: float, lr: float, epochs: int, patience: int,
                 val_fraction: float, seed: int):
        self.settings = SimpleNamespace(hidden=hidden, dropout=dropout, weight_decay=weight_decay, lr=lr,
                                        epochs=epochs, patience=patience, val_fraction=val_fraction)
        self.seed = seed

    def fit(self, features: np.ndarray, y: np.ndarray):
        import torch  # here: the bag-of-words and logistic probes start without it

        s = self.settings
        n_classes = int(y.max()) + 1
        n_val = max(n_classes, int(round(len(y) * s.val_fraction)))
        can_hold_out = np.bincount(y).min() >= 2 and len(y) - n_val >= n_classes
        if can_hold_out:
            train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y,
                                                  random_state=self.seed)
        else:  # too few examples to hold any out: train for the full number of epochs
            train_idx, val_idx = np.arange(len(y)), np.arange(0)
        self.mean = features[train_idx].mean(0)
        self.std = features[train_idx].std(0) + 1e-6
        x = torch.tensor((features - self.mean) / self.std, dtype=torch.float32)
        target = torch.tensor(y)
        torch.manual_seed(self.seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], s.hidden), torch.nn.ReLU(),
                                       torch.nn.Dropout(s.dropout), torch.nn.Linear(s.hidden, n_classes))
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        best, best_state, waited, self.best_epoch = float("inf"), None, 0, s.epochs
        for epoch in range(s.epochs):
            self.net.train()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(self.net(x[train_idx]), target[train_idx]).backward()
            optimizer.step()
            if len(val_idx):
                self.net.eval()
                with torch.no_grad():
                    val_loss = torch.nn.functional.cross_entropy(self.net(x[val_idx]), target[val_idx]).item()
                if val_loss < best - 1e-6:
                    best, waited, self.best_epoch = val_loss, 0, epoch + 1
                    best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
                else:
                    waited += 1
                    if waited >= s.patience:
                        break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.tensor((features - self.mean) / self.std, dtype=torch.float32)
            return self.net(x).argmax(1).numpy()


def _matrix(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.stack(frame[column].to_numpy()).astype(np.float32)


def run_probe(train_path: str, eval_paths: dict[str, str], eval_samples: dict[str, str], out: str,
              settings: Settings, keys: dict) -> dict:
    """Every layer x pooling x probe of one (model, task, prompt, k, seed) cell -> one metrics file."""
    cost = Cost()
    train, meta = read_table(train_path, META_KEY)
    y_train = train["label"].to_numpy()
    read = {split: read_table(path, META_KEY) for split, path in eval_paths.items()}
    evals = {split: frame for split, (frame, _) in read.items()}
    samples = {split: read_table(eval_samples[split], META_KEY) for split in evals}
    labels = next(iter(samples.values()))[1]["labels"]
    groups = {split: group_columns(samples[split][0], frame["id"]) for split, frame in evals.items()}
    seed = keys.get("seed") or 0
    records = []
    for how in meta["pooling"]:
        for layer in meta["layers"]:
            column = activation_column(how, layer)
            x_train = _matrix(train, column)
            fitted = {}
            if "logreg" in settings.probes:
                logreg = settings.logreg
                model, c = fit_logreg(x_train, y_train, logreg.Cs, logreg.cv_folds, seed, scale=True)
                fitted["probe_logreg"] = (model.predict, {"C": c})
            if "mlp" in settings.probes:
                mlp = MLPProbe(seed=seed, **settings.mlp.values()).fit(x_train, y_train)
                fitted["probe_mlp"] = (mlp.predict, {"best_epoch": mlp.best_epoch})
            for method, (predict, details) in fitted.items():
                for split, frame in evals.items():
                    record = classification_record(
                        dict(keys, method=method, layer=layer, pooling=how, split=split,
                             examples=len(y_train) + meta["prompt"]["shots"]), labels,
                        frame["label"].to_numpy(), predict(_matrix(frame, column)), groups[split])
                    record["details"] = dict(details, n_train=len(y_train), truncated=meta["truncated"])
                    records.append(record)
    prov = provenance(settings.raw, meta["model"]["revision"],
                      [meta["sample"]["fingerprint"]] + [m["sample"]["fingerprint"] for _, m in read.values()])
    result = finish(records, cost.as_dict(), prov)
    write_json(result, out)
    return result


def text_of(frame: pd.DataFrame, fields: list[str]) -> list[str]:
    return frame[fields].astype(str).agg("\n".join, axis=1).tolist()


def run_bow(train_path: str, eval_paths: dict[str, str], out: str, settings: Settings, keys: dict) -> dict:
    """Bag-of-words (or tf-idf) logistic regression on the raw text of the same samples. With a validation
    share (study 2's 80/20), that share of each label's rows is held out and scored beside the training rows."""
    cost = Cost()
    sample, meta = read_table(train_path, META_KEY)
    fields, labels = meta["fields"], meta["labels"]
    share, seed = settings.validation or 0, keys.get("seed") or 0
    held = validation_split(sample["label"].to_numpy(), share, seed)
    train = sample[~held]
    vectorizer_class = TfidfVectorizer if settings.vectorizer == "tfidf" else CountVectorizer
    vectorizer = vectorizer_class(ngram_range=(1, settings.ngram_max), lowercase=True)
    x_train = vectorizer.fit_transform(text_of(train, fields))
    y_train = train["label"].to_numpy()
    model, c = fit_logreg(x_train, y_train, settings.Cs, settings.cv_folds, seed, scale=False)
    records, fingerprints = [], [meta["fingerprint"]]
    splits = {"train": train, "validation": sample[held]} if share else {}
    for split, path in eval_paths.items():
        splits[split], frame_meta = read_table(path, META_KEY)
        fingerprints.append(frame_meta["fingerprint"])
    for split, frame in splits.items():
        record = classification_record(dict(keys, method=f"bow_{settings.vectorizer}", split=split,
                                            examples=len(sample)), labels,
                                       frame["label"].to_numpy(), model.predict(vectorizer.transform(
                                           text_of(frame, fields))), group_columns(frame, frame["id"]))
        record["details"] = {"C": c, "vocabulary": len(vectorizer.vocabulary_), "n_train": len(y_train)}
        records.append(record)
    result = finish(records, cost.as_dict(), provenance(settings.raw, None, fingerprints))
    write_json(result, out)
    return result
