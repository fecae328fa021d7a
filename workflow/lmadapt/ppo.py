"""The `ppo` stage: a policy (the base model, or LoRA adapters on it) learns to raise a sequence classifier's score
of its generations, with a KL penalty to the frozen base.

The pinned TRL (1.16) no longer ships PPOTrainer; its successors for online RL with a reward model (RLOOTrainer,
GRPOTrainer) take causal LMs only, and study 3's policy is Flan-T5. So the loop is here, for decoders and
encoder-decoders alike, and is RLOO as TRL implements it: `samples` completions of each prompt, each one's
advantage its reward (less kl_coef x its KL to the base) minus the mean of the other completions' (no value
head), PPO's clipped ratio over `ppo_epochs` passes, dropout off. Before and after training, held-out prompts
get one sampled completion each (the same seed): mean reward, share of bad ones (reward below the threshold),
KL to the base; a sample of them side by side goes to generations.parquet.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .config import fingerprint
from .data import read_corpus
from .derived import derived_record, save_derived
from .forward import pad_batch
from .io import write_json, write_parquet
from .methods import DECODER
from .metrics import Cost, code_version, write_cost
from .models import load_model
from .prompt import Pattern, classifier_inputs
from .settings import Settings
from .training import init_distributed, monitor_config


class Reward:
    """A sequence classifier's probability of one label (or 1 - it, for a label to avoid) for a text. A derived
    classifier's folder records the pattern it was trained on, and texts are framed by it."""

    def __init__(self, folder: str, wanted: str, avoid: bool = False, batch_size: int = 16):
        self.lm = load_model(folder, head="classification")
        config = self.lm.model.config
        names = {str(name): int(i) for i, name in config.id2label.items()}
        if wanted not in names:
            raise ValueError(f"ppo.reward: the classifier in {folder} has no label {wanted!r} (its labels: "
                             f"{sorted(names)})")
        self.index, self.avoid, self.batch_size = names[wanted], avoid, batch_size
        framed = self.lm.info.get("pattern")
        self.pattern = Pattern(**dict(framed, labels=tuple(framed["labels"]))) if framed else Pattern(
            "text", "{text}", {name: name for name in names}, "", tuple(names))

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = pd.DataFrame({"text": texts})
        ids, _ = classifier_inputs(self.lm, self.pattern, rows, None)
        scores = []
        for first in range(0, len(ids), self.batch_size):
            input_ids, mask = pad_batch(ids[first: first + self.batch_size], self.lm.tokenizer.pad_token_id,
                                        self.lm.device)
            probs = self.lm.model(input_ids=input_ids, attention_mask=mask).logits.float().softmax(-1)
            scores.append(probs[:, self.index].cpu().numpy())
        score = np.concatenate(scores)
        return 1.0 - score if self.avoid else score


def read_prompts(path: str, source: dict, lm, settings: Settings) -> tuple[list[str], list[str], int]:
    """(training prompts, held-out prompts, prompts left out as too long): a seeded draw of the corpus's texts,
    each cut to its first prefix_tokens tokens and put in the template, the held-out ones first. A prompt that
    leaves no room for max_new_tokens in a decoder's context (or exceeds an encoder-decoder's) is left out, never
    cut."""
    prompting = settings.prompts
    texts = read_corpus(source, path, [prompting.column])[prompting.column]
    texts = [str(text) for text in texts if text.strip()]
    if prompting.prefix_tokens:
        texts = [lm.tokenizer.decode(ids[: prompting.prefix_tokens]) for ids in lm.encode_many(texts)]
    prompts = [prompting.template.format(text=text) for text in texts]
    budget = lm.context() - (settings.max_new_tokens if lm.kind == DECODER else 0)
    fitting = [prompt for prompt, ids in zip(prompts, prompt_ids(lm, prompts)) if len(ids) <= budget]
    order = np.random.default_rng(settings.seed).permutation(len(fitting))[: prompting.rows]
    drawn = [fitting[i] for i in order]
    if len(drawn) <= settings.held_out:
        raise ValueError(f"ppo: {len(drawn)} prompts (of {len(prompts)}; {len(prompts) - len(fitting)} too long for "
                         f"the model's {budget} tokens) leave none to train on after held_out={settings.held_out}")
    return drawn[settings.held_out:], drawn[: settings.held_out], len(prompts) - len(fitting)


def prompt_ids(lm, prompts: list[str]) -> list[list[int]]:
    """A prompt as the model reads it: a decoder's leading special ids; an encoder-decoder's trailing </s>."""
    return [lm.leading_special_ids() + ids + lm.trailing_ids() for ids in lm.encode_many(prompts)]


@torch.no_grad()
def sample(lm, model, prompts: list[list[int]], n: int, settings: Settings) -> list[list[int]]:
    """n sampled completions of each prompt (prompt-major), each up to and including its end-of-sequence id."""
    tokenizer = lm.tokenizer
    ids, mask = pad_batch(prompts, tokenizer.pad_token_id, lm.device, left=lm.kind == DECODER)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=settings.temperature,
                         top_p=settings.top_p, top_k=0, max_new_tokens=settings.max_new_tokens,
                         num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    generated = out[:, ids.shape[1]:] if lm.kind == DECODER else out[:, 1:]  # after the prompt / decoder start
    completions = []
    for row in generated.tolist():
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        completions.append(row[:end] or [tokenizer.eos_token_id])
    return completions


def completion_logprobs(lm, model, prompts: list[list[int]], completions: list[list[int]], temperature: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] log-probabilities of each completion's tokens at the sampling temperature, [B, T] mask)."""
    pad = lm.tokenizer.pad_token_id
    targets, target_mask = pad_batch(completions, pad, lm.device)
    if lm.kind == DECODER:
        width = max(map(len, prompts))
        ids, mask = pad_batch(prompts, pad, lm.device, left=True)
        ids, mask = torch.cat([ids, targets], 1), torch.cat([mask, target_mask], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, width - 1: -1]
    else:
        ids, mask = pad_batch(prompts, pad, lm.device)
        start = torch.full((len(completions), 1), model.config.decoder_start_token_id, device=lm.device)
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.cat([start, targets[:, :-1]], 1),
                       decoder_attention_mask=torch.cat([torch.ones_like(start), target_mask[:, :-1]], 1)).logits
    logprobs = (logits.float() / temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logprobs * target_mask, target_mask


class Policy:
    """The trained model and its frozen reference: with LoRA the reference is the same model with its adapters
    off; without, a second copy of the base."""

    def __init__(self, base_dir: str, settings: Settings):
        self.lm = load_model(base_dir, dtype="float32", head="auto")
        self.lora = settings.lora
        if self.lora:
            from peft import LoraConfig, get_peft_model

            self.model = get_peft_model(self.lm.model, LoraConfig(
                r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                target_modules=self.lora.target_modules,
                task_type="CAUSAL_LM" if self.lm.kind == DECODER else "SEQ_2_SEQ_LM"))
            self.reference = None
        else:
            self.model = self.lm.model
            self.reference = load_model(base_dir, dtype="float32", head="auto").model.requires_grad_(False)
        self.model.eval()  # dropout off: the ratio of a completion's probabilities is 1 before the update

    def reference_logprobs(self, prompts, completions, temperature):
        with torch.no_grad():
            if self.reference is not None:
                return completion_logprobs(self.lm, self.reference, prompts, completions, temperature)[0]
            with self.model.disable_adapter():
                return completion_logprobs(self.lm, self.model, prompts, completions, temperature)[0]

    def merged(self):
        return self.model.merge_and_unload() if self.lora else self.model


def evaluate(policy: Policy, reward: Reward, prompts: list[str],
             settings: Settings) -> tuple[dict, list[str], np.ndarray]:
    """One completion per held-out prompt, sampled from a fixed seed: (metrics, completions, rewards)."""
    torch.manual_seed(settings.seed + 1)
    ids = prompt_ids(policy.lm, prompts)
    completions = []
    for first in range(0, len(ids), settings.batch_size):
        completions += sample(policy.lm, policy.model, ids[first: first + settings.batch_size], 1, settings)
    texts = policy.lm.tokenizer.batch_decode(completions, skip_special_tokens=True)
    rewards = reward(texts)
    kl = []
    with torch.no_grad():
        for first in range(0, len(ids), settings.batch_size):
            part = slice(first, first + settings.batch_size)
            logprobs, mask = completion_logprobs(policy.lm, policy.model, ids[part], completions[part],
                                                 settings.temperature)
            reference = policy.reference_logprobs(ids[part], completions[part], settings.temperature)
            kl += ((logprobs - reference) * mask).sum(1).tolist()
    threshold = settings.reward.threshold
    metrics = {"mean_reward": round(float(rewards.mean()), 6),
               "bad_share": round(float((rewards < threshold).mean()), 6), "kl_to_base": round(float(np.mean(kl)), 6),
               "mean_tokens": round(float(np.mean([len(c) for c in completions])), 3), "prompts": len(prompts)}
    return metrics, texts, rewards


def rloo_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Each completion's reward less the mean reward of the other n - 1 completions of its prompt."""
    grouped = rewards.view(-1, n)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (n - 1)
    return (grouped - baseline).view(-1)


def train_policy(policy: Policy, reward, train: list[str], held: list[str], settings: Settings,
                 monitor=None) -> dict:
    """RLOO with PPO clipping for settings.steps steps of batch_size prompts; reward(texts) -> array of
    rewards. Returns the held-out metrics, completions and rewards before and after, and each step's log (also to
    DeepSpeed's monitor where one is given: every step's reward, KL and loss)."""
    before = evaluate(policy, reward, held, settings)
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=settings.lr)
    n, batch, history = settings.samples, settings.batch_size, []
    order = np.random.default_rng([settings.seed, 1]).permutation(len(train))
    torch.manual_seed(settings.seed)
    for step in range(settings.steps):
        prompts = prompt_ids(policy.lm, [train[order[(step * batch + i) % len(order)]] for i in range(batch)])
        completions = sample(policy.lm, policy.model, prompts, n, settings)
        repeated = [p for p in prompts for _ in range(n)]
        scores = torch.tensor(reward(policy.lm.tokenizer.batch_decode(completions, skip_special_tokens=True)))
        reference = policy.reference_logprobs(repeated, completions, settings.temperature)
        for epoch in range(settings.ppo_epochs):
            new, mask = completion_logprobs(policy.lm, policy.model, repeated, completions, settings.temperature)
            if epoch == 0:  # the sampling policy's log-probabilities: the first pass's (dropout is off)
                old = new.detach()
                kl = ((old - reference) * mask).sum(1)
                advantages = rloo_advantages(scores.float() - settings.kl_coef * kl.cpu(), n).to(mask.device)
            ratio = (new - old).exp()
            clipped = ratio.clamp(1 - settings.clip, 1 + settings.clip)
            per_token = -torch.min(ratio * advantages[:, None], clipped * advantages[:, None])
            loss = (per_token * mask).sum() / mask.sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
            optimizer.step()
        history.append({"step": step + 1, "mean_reward": round(float(scores.mean()), 6),
                        "kl_to_base": round(float(kl.mean()), 6), "loss": round(loss.item(), 6)})
        if monitor is not None:
            monitor.write_events([(f"Train/Steps/{key}", history[-1][key], step + 1)
                                  for key in ("mean_reward", "kl_to_base", "loss")])
        print(f"step {step + 1}: reward {history[-1]['mean_reward']:.4f}, KL {history[-1]['kl_to_base']:.4f}",
              flush=True)
    return {"before": before, "after": evaluate(policy, reward, held, settings), "per_step": history}


def csv_monitor(folder: Path):
    """DeepSpeed's CSV monitor (training.monitor_config) for a loop that DeepSpeed does not run (it writes from
    rank 0 of a process group: a one-process group here)."""
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    init_distributed()
    return MonitorMaster(get_monitor_config(monitor_config(folder)))


def run_ppo(name: str, base_dir: str, reward_dir: str, prompts_path: str, prompts_source: dict, settings: Settings,
            out_model: str, metrics_path: str, generations_path: str) -> dict:
    """Train the policy from base_dir against the classifier in reward_dir; write the derived model folder, the
    metrics and the before/after generations."""
    cost = Cost()
    torch.manual_seed(settings.seed)
    policy = Policy(base_dir, settings)
    train, held, too_long = read_prompts(prompts_path, prompts_source, policy.lm, settings)
    wanted = settings.reward
    reward = Reward(reward_dir, wanted.avoid if wanted.label is None else wanted.label, avoid=wanted.label is None)
    cost.loaded()  # the policy, its reference and the reward model (the preflight costs no PPO job: no FLOPs here)
    start = time.time()
    trained = train_policy(policy, reward, train, held, settings, csv_monitor(Path(metrics_path).parent / "monitor"))
    train_seconds = time.time() - start
    (before, before_texts, before_rewards), (after, after_texts, after_rewards) = trained["before"], trained["after"]
    data_fingerprint = fingerprint([train, held])
    record = derived_record(name, "ppo", policy.lm.info, settings.raw, data_fingerprint)
    save_derived(policy.merged(), policy.lm.tokenizer, out_model, record)
    shown = slice(0, settings.compare)
    write_parquet(pa.table({"prompt": held[shown], "before": before_texts[shown],
                            "reward_before": before_rewards[shown].tolist(), "after": after_texts[shown],
                            "reward_after": after_rewards[shown].tolist()}), generations_path)
    metrics = {"model": name, "derive": "ppo", "model_revision": record["revision"], "base": record["base"],
               "reward_model": reward.lm.info, "held_out": {"before": before, "after": after},
               "train": {"steps": settings.steps, "prompts": len(train), "prompts_too_long": too_long,
                         "per_step": trained["per_step"],
                         "train_seconds": round(train_seconds, 3)},
               "cost": cost.as_dict(),
               "provenance": {"config_hash": record["settings_hash"], "code_version": code_version(),
                              "data_fingerprint": data_fingerprint}}
    write_json(metrics, metrics_path)
    write_cost("ppo", metrics_path, metrics["cost"])
    return metrics
