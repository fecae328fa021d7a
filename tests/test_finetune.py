"""Fine-tuning with DeepSpeed on CPU (tiny OPT): every method learns under ZeRO-2 and ZeRO-3, the distillation
KL is zero for identical teacher and student, saved weights predict the same in a new process, a killed run
resumes, and two processes train together over gloo."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import BIN, REPO, clean_env, kill_after_first_checkpoint, rte_task
from lmadapt.checks import check_config
from lmadapt.config import FINETUNE_RUN_SETTINGS, ConfigError, finetune_settings
from lmadapt.finetune import build_model, run_finetune
from lmadapt.training import epoch_batches, rank_share, slurm_ranks
from lmadapt.forward import pad_batch
from lmadapt.methods import DECODER, METHODS, distill_loss
from lmadapt.icl import run_teacher
from lmadapt.models import load_tokens
from lmadapt.prompt import classifier_inputs, encode_prompt, task_pattern
from lmadapt.settings import read_settings, section_settings


# ZeRO-2 for every method in the fast tier; ZeRO-3 (parameters partitioned) in the slow tier
ZERO_STAGES = ["zero2", pytest.param("zero3", marks=pytest.mark.slow)]


def settings(**overrides):
    base = {"epochs": 6, "batch_size": 4, "effective_batch": 4, "lr": 1e-3, "warmup": 0.0, "dropout": 0.0,
            "checkpoint_every": 2, "lora": {"r": 8, "alpha": 16, "lr": 1e-2}, "distill": {"shots": 0}}
    base.update(overrides)
    return check_config({"tasks": {"rte": rte_task()}, "finetune": base})["finetune"]


@pytest.fixture(scope="module")
def rte(rte_samples):
    return rte_samples(8)  # every training row of the fixture: 16 examples, 4 batches of 4 per epoch


@pytest.fixture(scope="module")
def teacher(tiny_opt, rte):
    task, folder = rte
    out = folder / "teacher.parquet"
    run_teacher(str(tiny_opt), task, str(folder / "train.parquet"), None, str(out),
                read_settings("teacher", {"shots": 0, "pattern": None, "batch_size": 4, "dtype": "float32"}), seed=1)
    return out


def finetune(tiny_opt, rte, tmp_path, method, teacher=None, all_records=False, **overrides):
    task, folder = rte
    zero = overrides.pop("zero", "zero2")
    result = run_finetune(str(tiny_opt), task, str(folder / "train.parquet"), {"test": str(folder / "test.parquet")},
                          str(tmp_path / "metrics.json"),
                          section_settings("finetune", settings(zero=zero, **overrides)),
                          {"task": "rte", "model": "tiny", "method": method, "k": 8, "seed": 1},
                          str(tmp_path / "work"), str(REPO / f"config/deepspeed/{zero}.json"),
                          teacher_path=str(teacher) if teacher else None)
    return result["records"] if all_records else result["records"][0]


@pytest.mark.parametrize("zero", ZERO_STAGES)
@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if DECODER in spec.kinds])  # on a decoder
def test_every_method_learns(tiny_opt, rte, teacher, tmp_path, method, zero):
    record = finetune(tiny_opt, rte, tmp_path, method, teacher if METHODS[method].teacher else None, zero=zero)
    losses = record["details"]["loss_per_step"]
    assert len(losses) == record["details"]["optimizer_steps"] == 6 * 4  # 16 examples / batch 4 x 6 epochs
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05
    assert record["details"]["zero_stage"] == int(zero[-1]) and record["details"]["precision"] == "fp32"
    assert record["method"] == method and record["n"] == 6 and record["accuracy"] is not None
    assert record["details"]["lr"] == (1e-2 if METHODS[method].lora else 1e-3)
    assert record["examples"] == 16 and record["details"]["truncated_eval_inputs"] == {"test": 0}
    assert not (tmp_path / "work/checkpoints").exists()  # removed after a successful run
    if METHODS[method].lora:
        assert (tmp_path / "work/adapter/adapter_config.json").exists()
        assert record["details"]["trainable_parameters"] < 10_000


@pytest.mark.parametrize("zero", ZERO_STAGES)
def test_a_validation_share_keeps_the_best_epoch_and_reports_train_validation_and_test(tiny_opt, rte, tmp_path,
                                                                                       zero):
    """Study 2's protocol: half of each label's training rows validate after every epoch, and the weights
    evaluated are the best epoch's, not the last's (the validation record scores what that epoch scored)."""
    records = {r["split"]: r for r in finetune(tiny_opt, rte, tmp_path, "head", zero=zero, validation=0.5,
                                               epochs=4, lr=3e-2, all_records=True)}
    assert list(records) == ["train", "validation", "test"]
    assert records["train"]["n"] == records["validation"]["n"] == 8  # 8 per class: 4 train, 4 validate
    assert records["validation"]["per_class"]["entailment"]["support"] == 4
    details = records["test"]["details"]
    history, best = details["validation_accuracy_per_epoch"], details["best_epoch"]
    assert len(history) == 4 and best == history.index(max(history)) + 1
    assert history[-1] < max(history)  # this seed's last epoch is worse: the best one must have been restored
    assert records["validation"]["accuracy"] == max(history)
    assert all(r["examples"] == 16 for r in records.values())
    assert details["optimizer_steps"] == 4 * 2  # 8 training rows / batch 4, 4 epochs


@pytest.mark.parametrize("zero", ZERO_STAGES)
def test_an_encoder_fine_tunes_its_classification_head(tiny_bert, rte, tmp_path, zero):
    """A BERT-like encoder (masked-LM checkpoint, as roberta-base ships) gets a new classification head; its
    inputs are <s> example </s> as its tokenizer wraps a text, and the saved model predicts what the job did."""
    from transformers import AutoModelForSequenceClassification

    task, folder = rte
    # a random encoder sits on a plateau for its first ~30 steps at lr 1e-3 (measured): a larger lr, more epochs
    record = finetune(tiny_bert, rte, tmp_path, "head", zero=zero, save_model=True, epochs=15, lr=5e-3)
    losses = record["details"]["loss_per_step"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05
    tokens = load_tokens(tiny_bert)
    rows = pd.read_parquet(folder / "test.parquet")
    ids, _ = classifier_inputs(tokens, task_pattern(task), rows, 512)
    assert {(i[0], i[-1]) for i in ids} == {(tokens.tokenizer.cls_token_id, tokens.tokenizer.sep_token_id)}
    assert [i[1:-1] for i in ids] == encode_prompt(tokens, task_pattern(task), rows, rows.iloc[:0]).examples
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "work/model").eval()
    batch, mask = pad_batch(ids, tokens.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        plain = model(input_ids=batch, attention_mask=mask).logits.argmax(-1).tolist()
    assert plain == pd.read_parquet(tmp_path / "work/predictions_test.parquet")["prediction"].tolist()
    # LoRA on the encoder's own projection names, a new head beside it
    lora = {"r": 8, "alpha": 16, "lr": 1e-2, "target_modules": ["query", "value"]}
    record = finetune(tiny_bert, rte, tmp_path / "lora", "lora_head", zero=zero, epochs=40, lora=lora)
    assert np.mean(record["details"]["loss_per_step"][-4:]) < np.mean(record["details"]["loss_per_step"][:4]) - 0.05
    assert record["details"]["trainable_parameters"] < 5_000
    with pytest.raises(ConfigError, match="method pattern runs on decoder models; tiny is an encoder model"):
        finetune(tiny_bert, rte, tmp_path / "pattern", "pattern", zero=zero)


@pytest.mark.parametrize("zero", ZERO_STAGES)
@pytest.mark.parametrize("method", ["seq2seq", "lora_seq2seq"])
def test_an_encoder_decoder_learns_the_verbalizer_as_its_decoder_target(tiny_t5, rte, tmp_path, method, zero):
    """Flan-T5-style fine-tuning: the decoder's loss on the gold verbalizer falls, and the job's predictions are
    the ICL scorer's (the likeliest verbalizer as the decoder's continuation) on the trained weights."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from lmadapt.forward import seq2seq_label_logprobs

    task, folder = rte
    lora = {"r": 8, "alpha": 16, "lr": 1e-2, "target_modules": ["q", "v"]}  # T5 names its projections q, v
    record = finetune(tiny_t5, rte, tmp_path, method, zero=zero, save_model=True, lora=lora)
    losses = record["details"]["loss_per_step"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5
    if METHODS[method].lora:
        trained = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5), tmp_path / "work/adapter")
    else:
        trained = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "work/model")
    tokens = load_tokens(tiny_t5)
    rows = pd.read_parquet(folder / "test.parquet")
    ids, _ = classifier_inputs(tokens, task_pattern(task), rows, 512)
    assert {i[-1] for i in ids} == {tokens.tokenizer.eos_token_id}  # T5's input ends with </s>
    verbalizers = encode_prompt(tokens, task_pattern(task), rows.iloc[:0], rows.iloc[:0]).verbalizers
    scores = seq2seq_label_logprobs(trained.eval(), tokens.tokenizer.pad_token_id, ids, verbalizers, batch_size=4)
    assert scores.argmax(1).tolist() == pd.read_parquet(tmp_path / "work/predictions_test.parquet")[
        "prediction"].tolist()
    # the head's class scores (a teacher method's logits) are the same log-likelihoods, computed with gradients
    padded, mask = pad_batch(ids, tokens.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        logits = METHODS[method].head.logits(trained, padded, mask, verbalizers)
    assert np.allclose(logits.numpy(), scores, atol=1e-4)


def test_epoch_batches_group_lengths_and_split_ranks_evenly():
    lengths = np.random.default_rng(0).integers(5, 200, size=403)
    order_length = len(lengths) // 2 * 2
    ranks = [epoch_batches(lengths, order_length, 7, 1, rank, 2, 8, window=10) for rank in range(2)]
    taken = [np.concatenate(batches) for batches in ranks]
    assert len(ranks[0]) == len(ranks[1]) and len(taken[0]) == len(taken[1]) == order_length // 2
    assert len(set(taken[0]) | set(taken[1])) == order_length  # each example once per epoch, on one rank
    assert [b.tolist() for b in epoch_batches(lengths, order_length, 7, 1, 0, 2, 8, window=10)] == \
        [b.tolist() for b in ranks[0]]  # the same seed and epoch, the same batches
    assert [b.tolist() for b in epoch_batches(lengths, order_length, 7, 2, 0, 2, 8, window=10)] != \
        [b.tolist() for b in ranks[0]]

    def padding(batches):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)

    rng = np.random.default_rng([7, 1])
    shuffled = rng.permutation(len(lengths))[:order_length][0::2]
    random_batches = [shuffled[i: i + 8] for i in range(0, len(shuffled), 8)]
    assert padding(ranks[0]) < padding(random_batches) / 3


def test_each_rank_predicts_its_share_and_as_many_as_the_others():
    """Evaluation over several processes: every row once, every rank the same count (ZeRO-3's forwards are
    collectives): a short share repeats its last row, one with none repeats the first."""
    assert rank_share(5, 0, 1) == [0, 1, 2, 3, 4] and rank_share(0, 1, 2) == []
    shares = [rank_share(7, rank, 2) for rank in range(2)]
    assert shares == [[0, 2, 4, 6], [1, 3, 5, 5]]
    assert [rank_share(2, rank, 4) for rank in range(4)] == [[0], [1], [0], [0]]
    for n, world in ((30000, 8), (277, 4), (3, 8)):
        shares = [rank_share(n, rank, world) for rank in range(world)]
        assert set().union(*shares) == set(range(n)) and len({len(share) for share in shares}) == 1


def test_a_task_srun_started_joins_as_a_torchrun_process_would():
    """srun's environment read as torchrun's (tests/test_slurm.py starts real ones on two nodes); rank 0 listens
    on the node srun ran on, at a port of the job's own."""
    task = {"SLURM_JOB_ID": "20042", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
            "SLURM_LOCALID": "1", "SLURM_LAUNCH_NODE_IPADDR": "10.77.0.2"}
    assert slurm_ranks(task) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.77.0.2",
                                 "MASTER_PORT": "20042"}
    assert slurm_ranks(task | {"SLURM_STEP_NUM_TASKS": "1"}) == {}  # alone: a one-process group, as off Slurm
    assert slurm_ranks(task | {"WORLD_SIZE": "2"}) == {}  # torchrun inside a Slurm job already said
    assert slurm_ranks({k: v for k, v in task.items() if k != "SLURM_STEP_ID"}) == {}  # the batch script itself


def test_distillation_kl_is_zero_for_the_same_model_on_the_same_input(tiny_opt, rte, teacher):
    task, folder = rte
    logits = torch.randn(5, 3)
    loss, kl, ce = distill_loss(logits, logits.softmax(-1), torch.tensor([0, 1, 2, 0, 1]), 1.0, 0.5, 0.5)
    assert kl.item() == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(0.5 * ce.item())
    # the teacher stage (no demonstrations) and an untrained student of the same model see the same input
    lm, model = build_model(str(tiny_opt), "distill", 2, section_settings("finetune", settings()))
    model.eval()
    train = pd.read_parquet(folder / "train.parquet")
    prompt = encode_prompt(lm, task_pattern(task), train, train.iloc[:0])
    ids, mask = pad_batch([lm.leading_special_ids() + e for e in prompt.examples], lm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        student = METHODS["distill"].head.logits(model, ids, mask, prompt.verbalizers)
    teacher_probs = torch.tensor(np.stack(pd.read_parquet(teacher)["probs"].to_numpy()))
    _, kl, _ = distill_loss(student, teacher_probs, torch.tensor(train["label"].to_numpy()), 1.0, 0.5, 0.5)
    assert abs(kl.item()) < 1e-5


def cli(tiny_opt, rte, tmp_path, method="pattern", launcher=(), evals=(), **overrides):
    """The finetune command of a cell (evals: more SPLIT=PATH evaluation samples than the test split)."""
    task, folder = rte
    cmd = [*launcher, "finetune"] if launcher else [str(BIN / "lmadapt"), "finetune"]
    full = settings(**overrides)  # split as the rule splits it: what the job computes, how it runs
    cmd += ["--model-dir", str(tiny_opt), "--task", "rte", "--task-config", json.dumps(task),
            "--train", str(folder / "train.parquet"), "--eval", f"test={folder / 'test.parquet'}", *evals,
            "--settings", json.dumps(finetune_settings({"finetune": full}, method)),
            "--run-settings", json.dumps({k: full[k] for k in FINETUNE_RUN_SETTINGS}),
            "--deepspeed-config",
            str(REPO / f"config/deepspeed/{overrides.get('zero', 'zero2')}.json"),
            "--keys", json.dumps({"task": "rte", "model": "tiny", "method": method, "k": 8, "seed": 1}),
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "metrics.json")]
    return cmd, clean_env(PYTHONPATH=str(REPO / "workflow"))


def saved_model_predictions(tmp_path, rte, env) -> list[int]:
    """The test split's predictions of the model a job saved (work/model), by one process that loads it anew."""
    task, folder = rte
    script = f"""
import json, sys, pandas as pd, torch
from lmadapt.models import load_model
from lmadapt.methods import METHODS
from lmadapt.forward import pad_batch
from lmadapt.prompt import encode_prompt, task_pattern
task = json.loads(sys.argv[1])
lm = load_model("{tmp_path / 'work/model'}", dtype="float32")
rows = pd.read_parquet("{folder / 'test.parquet'}")
prompt = encode_prompt(lm, task_pattern(task), rows, rows.iloc[:0], max_length=512)
ids, mask = pad_batch([lm.leading_special_ids() + e for e in prompt.examples], lm.tokenizer.pad_token_id, "cpu")
with torch.no_grad():
    logits = METHODS["pattern"].head.logits(lm.model, ids, mask, prompt.verbalizers)
    print(json.dumps(logits.argmax(-1).tolist()))
"""
    out = subprocess.run([sys.executable, "-c", script, json.dumps(task)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow  # a training job in its own process
def test_saved_model_predicts_the_same_in_a_new_process(tiny_opt, rte, tmp_path):
    cmd, env = cli(tiny_opt, rte, tmp_path, zero="zero3", save_model=True)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    saved = pd.read_parquet(tmp_path / "work/predictions_test.parquet")
    assert saved_model_predictions(tmp_path, rte, env) == saved["prediction"].tolist()


def killed_after_a_checkpoint(cmd, env, tmp_path):
    kill_after_first_checkpoint(cmd, env, tmp_path / "work/checkpoints", tmp_path / "metrics.json")


@pytest.mark.slow  # a training job in its own process
def test_killed_run_resumes_from_its_checkpoint_to_the_same_result(tiny_opt, rte, tmp_path):
    """With a validation share: the epochs validated before the kill, and the best epoch's weights, carry over."""
    overrides = dict(epochs=8, checkpoint_every=5, batch_size=2, effective_batch=2, dropout=0.1, validation=0.25)
    killed_after_a_checkpoint(*cli(tiny_opt, rte, tmp_path, **overrides), tmp_path)
    cmd, env = cli(tiny_opt, rte, tmp_path, **dict(overrides, checkpoint_every=7))  # how it runs: still resumes
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    resumed = json.loads((tmp_path / "metrics.json").read_text())["records"][0]
    assert resumed["details"]["resumed_from_micro_step"] > 0
    assert resumed["details"]["optimizer_steps"] == resumed["details"]["planned_optimizer_steps"] == 8 * 6
    # the same run uninterrupted: equal losses at every step (dropout masks included), predictions and metrics
    whole = tmp_path / "whole"
    cmd, env = cli(tiny_opt, rte, whole, **overrides)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    reference = json.loads((whole / "metrics.json").read_text())["records"][0]
    how_it_ran = ("train_seconds", "train_tokens_per_s", "resumed_from_micro_step")
    assert {k: v for k, v in resumed["details"].items() if k not in how_it_ran} == {
        k: v for k, v in reference["details"].items() if k not in how_it_ran}
    for key in ("accuracy", "macro_f1", "predicted_distribution"):
        assert resumed[key] == reference[key]
    assert (tmp_path / "work/predictions_test.parquet").read_bytes() == (
        whole / "work/predictions_test.parquet").read_bytes()


@pytest.mark.slow  # a training job in its own process
def test_checkpoint_of_other_settings_is_not_resumed(tiny_opt, rte, tmp_path):
    overrides = dict(epochs=16, checkpoint_every=5, batch_size=2, effective_batch=2)  # long enough to be killed
    killed_after_a_checkpoint(*cli(tiny_opt, rte, tmp_path, **overrides), tmp_path)
    cmd, env = cli(tiny_opt, rte, tmp_path, **dict(overrides, lr=2e-3))  # what it computes: starts over
    proc = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    details = json.loads((tmp_path / "metrics.json").read_text())["records"][0]["details"]
    assert details["resumed_from_micro_step"] is None and "other settings" in proc.stdout
    assert details["optimizer_steps"] == details["planned_optimizer_steps"] == 16 * 8 and details["lr"] == 2e-3


@pytest.mark.slow  # a training job in its own process
def test_two_processes_over_gloo(tiny_opt, rte, tmp_path):
    launcher = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "lmadapt"]
    task, folder = rte
    test = pq.read_table(folder / "test.parquet")
    pq.write_table(test.slice(0, 5), tmp_path / "five.parquet")  # with the sample's metadata: a split of 5 rows
    cmd, env = cli(tiny_opt, rte, tmp_path, launcher=launcher, zero="zero3", epochs=4, effective_batch=8,
                   save_model=True, evals=[f"five={tmp_path / 'five.parquet'}"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "metrics.json").read_text())["records"][0]
    assert record["details"]["world_size"] == 2
    assert record["details"]["optimizer_steps"] == 4 * 2  # 16 examples, 8 per rank, batch 4
    # each rank evaluated every other row (of five: one rank repeats its last) and they gathered them in order
    saved = {split: pd.read_parquet(tmp_path / f"work/predictions_{split}.parquet") for split in ("test", "five")}
    assert saved["test"]["id"].tolist() == test["id"].to_pylist() and len(saved["five"]) == 5
    assert saved_model_predictions(tmp_path, rte, env) == saved["test"]["prediction"].tolist()
    assert saved["five"]["prediction"].tolist() == saved["test"]["prediction"].tolist()[:5]
