"""What each job of the workflow gets, from (rule, cell, config) alone: its params (exactly the settings it
computes with, so that only a change to what it computes makes it stale) and its input paths. The rules'
functions in common.smk are thin adapters over `Jobs`, which computes each (rule, cell) once; the staleness
promises are unit tests over every job of a config (tests/test_jobs.py), and `Jobs.cells` lists those jobs.

A param is a string Snakemake stores per job: a config slice as one shell-quoted JSON argument (`as_arg`).
Params derived from inputs or resources (paths as arguments, checkpoint cadence) stay in the rules: Snakemake
never reruns a job for them."""
from __future__ import annotations

import json
import shlex

from . import layout
from .config import FINETUNE_RUN_SETTINGS, SELECTIONS, finetune_settings, stage_config, training_layout
from .data import corpus_path, resolve_path
from .grid import demonstration_pool, derived_models, reward_models, root_model
from .layout import SampleName
from .methods import METHODS
from .resources import dataset_identity, model_identity
from .stages import STAGES, grid


# each rule's params (a job's values: Jobs.params)
PARAMS = {
    "fetch_data": ("source",), "fetch_corpus": ("source",), "fetch_model": ("model",),
    "sample": ("task", "split", "test_seed"), "extract": ("task", "settings"), "probe": ("settings", "cell", "samples"),
    "bow": ("settings", "cell", "evals"), "icl": ("task", "settings", "cell", "evals"), "teacher": ("task", "settings"),
    "finetune": ("task", "settings", "cell", "evals", "launcher"), "instruct": ("settings", "corpora", "launcher"),
    "classifier": ("task", "settings", "cell", "evals", "launcher"), "ppo": ("settings", "corpus"),
    "preflight": ("config",), "aggregate": ("settings",), "resolved_config": ("config",),
}


TRAINING_RULES = ("finetune", "instruct", "classifier")  # their jobs take all of their model's GPUs
INFERENCE_RUN_SETTINGS = ("batch_size",)  # of extract and icl: how a job runs (Jobs.run_settings)


def _without_run_settings(stage: str, settings: dict) -> dict:
    """A stage's settings (a section, or a model's own) less its inference batch size: extract's and icl's, the
    teacher's (finetune.distill's; fine-tuning's own micro-batch is what it computes with)."""
    if stage == "finetune":
        distill = settings.get("distill")
        return settings if distill is None else dict(settings, distill={
            k: v for k, v in distill.items() if k != "batch_size"})
    return {k: v for k, v in settings.items() if k not in INFERENCE_RUN_SETTINGS}


def as_arg(value) -> str:
    """A config slice as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(value, sort_keys=True))


class Jobs:
    """Every job's params and inputs for one (checked) config, each computed once per (rule, cell)."""

    def __init__(self, config: dict):
        self.config = config
        self.grid = grid(config)
        self._cache: dict = {}

    def stage(self, stage: str, model: str | None = None) -> dict:
        """stage_config, once per (stage, model): the grid asks for it thousands of times (not to be changed)."""
        return self._memo(("stage", stage, model), lambda: stage_config(self.config, stage, model))

    def method_settings(self, method: str, model: str) -> str:
        """finetune_settings as a param, once per (method, model)."""
        return self._memo(("method", method, model), lambda: as_arg(finetune_settings(self.config, method, model)))

    def pool_size(self, task: str) -> int:
        return self._memo(("pool", task), lambda: demonstration_pool(self.config, task))

    def _memo(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def params(self, rule: str, cell: dict) -> dict[str, str]:
        return self._once("params", rule, cell)

    def inputs(self, rule: str, cell: dict) -> dict[str, str | list[str]]:
        return self._once("inputs", rule, cell)

    def _once(self, what: str, rule: str, cell: dict):
        return self._memo((what, rule, tuple(sorted(cell.items()))), lambda: getattr(self, f"_{what}_{rule}")(**cell))

    # ------------------------------------------------------------ shared pieces

    def task_slice(self, task: str, *keys: str, **values) -> str:
        """The part of a task's config a job uses, so that e.g. adding a k reruns no existing job."""
        return as_arg({key: self.config["tasks"][task][key] for key in keys} | values)

    def task_prompting(self, task: str) -> str:
        """What a model job needs of its task: fields, labels and prompt patterns."""
        return self._memo(("prompting", task), lambda: self.task_slice(task, "fields", "labels", "prompt"))

    def stage_settings(self, stage: str, model: str, **extra) -> str:
        """A model stage's settings for one model's jobs (its own over the section's) without the selections
        (which models, tasks, shots, k: they name cells, they change no cell) and the batch size (how it runs)."""
        return self._memo(("settings", stage, model, tuple(sorted(extra.items()))), lambda: as_arg(
            {key: value for key, value in self.stage(stage, model).items()
             if key not in SELECTIONS + INFERENCE_RUN_SETTINGS} | extra))

    def run_settings(self, rule: str, cell: dict) -> dict:
        """How a job runs, never what it computes: an inference job's batch size (padded batches give the same
        numbers as one example at a time), a training job's checkpoint cadence. The rules pass them as a derived
        param, which Snakemake never reruns a job for. (Fine-tuning's micro-batch is not among them: it decides
        which examples each optimizer step sums, so it changes the result.)"""
        model = cell.get("model")
        if rule in ("extract", "icl"):
            return {key: self.stage(rule, model)[key] for key in INFERENCE_RUN_SETTINGS}
        if rule == "teacher":
            return {"batch_size": self.stage("finetune", model)["distill"]["batch_size"]}
        if rule in ("finetune", "classifier"):
            return {key: self.stage("finetune", model)[key] for key in FINETUNE_RUN_SETTINGS}
        if rule == "instruct":
            return {"checkpoint_every": self.stage("instruct", model)["checkpoint_every"]}
        return {}

    def eval_splits(self, task: str) -> list[str]:
        return layout.eval_splits(self.config["tasks"][task])

    def eval_samples(self, task: str) -> list[str]:
        """The in-domain test sample and every out-of-domain set of a task."""
        return [layout.sample_path(task, split) for split in self.eval_splits(task)]

    def eval_arg(self, task: str) -> str:
        """SPLIT=PATH arguments of a task's evaluation samples."""
        return self._memo(("evals", task), lambda: " ".join(
            f"{split}={path}" for split, path in zip(self.eval_splits(task), self.eval_samples(task))))

    def pool_file(self, task: str, seed, shots=1) -> str | list:
        """The demonstration pool a few-shot prompt of this seed draws from (none for zero shots)."""
        return layout.sample_path(task, layout.demonstration_pool(seed)) if int(shots) else []

    def model_dir(self, model: str) -> str:
        """Every stage loads models from the folder fetch_model prepares, or the one a derived model's rule
        trains."""
        pattern = layout.DERIVED_MODEL if self.config["models"][model].get("derive") else layout.PREPARED_MODEL
        return pattern.format(model=model)

    def gpus(self, rule: str, model: str) -> int:
        """The GPUs a model job takes: every one of its model's to train (finetune, instruct, classifier: a
        process each), one to infer."""
        count = self.config["models"][model]["gpus"]
        return count if rule in TRAINING_RULES else min(count, 1)

    def launcher(self, model: str) -> str:
        """One process per GPU: srun on every node of a job that spans several (each process takes its rank from
        Slurm), torchrun on one node; a plain process on CPU or one GPU."""
        nodes, per_node = training_layout(self.config["models"][model])
        if nodes > 1:
            return f"srun --nodes {nodes} --ntasks-per-node {per_node} --kill-on-bad-exit=1 lmadapt"
        gpus = self.config["models"][model]["gpus"]
        return f"torchrun --standalone --nproc_per_node {gpus} -m lmadapt" if gpus > 1 else "lmadapt"

    def slurm_layout(self, rule: str, model: str) -> dict[str, int | str | None]:
        """How a training job's processes meet Slurm (the Slurm plugin's resources; None leaves one unset). On
        one node: the model's GPUs and one task (tasks=0 on several GPUs: torchrun inside starts their processes,
        not the plugin). On several: the nodes, each node's GPUs (gres), a task per GPU, and `mpi` so that the
        plugin runs the command as it is and the command's own srun starts the tasks. Memoised: a rule asks once
        per resource."""
        return self._memo(("slurm", rule, model), lambda: self._slurm_layout(rule, model))

    def _slurm_layout(self, rule: str, model: str) -> dict[str, int | str | None]:
        nodes, per_node = training_layout(self.config["models"][model])
        gpus = self.config["models"][model]["gpus"]
        if nodes == 1:
            unset = dict.fromkeys(("nodes", "gres", "tasks_per_gpu", "tasks_per_node", "mpi"))
            return unset | {"gpu": self.gpus(rule, model), "tasks": 0 if gpus > 1 else 1}
        # the plugin takes a task count per node (more than one) or in all; Slurm refuses --ntasks-per-gpu beside
        # --ntasks-per-node, and the plugin would read `tasks` as tasks per GPU unless tasks_per_gpu is set
        return {"gpu": None, "gres": f"gpu:{gpus}" if gpus else None, "nodes": nodes, "mpi": "srun",
                "tasks_per_node": per_node if per_node > 1 else None, "tasks": nodes if per_node == 1 else None,
                "tasks_per_gpu": 1 if gpus == 1 else None}

    @staticmethod
    def cell_of(**cell) -> dict:
        """The cell's keys, as the metrics records carry them (an ICL cell's labeled examples are its
        demonstrations: k; k "all", the full training set, is recorded without one)."""
        if "shots" in cell:
            cell = dict(cell, k=cell.pop("shots"))
        keys = {key: cell[key] for key in ("task", "model", "prompt", "method") if key in cell}
        return keys | {key: None if cell[key] == "all" else int(cell[key]) for key in ("k", "seed") if key in cell}

    def source_entry(self, task: str, role: str) -> dict:
        """role: train, test, or ood_<name> (as in file names)."""
        task_config = self.config["tasks"][task]
        return task_config["ood"][role.removeprefix("ood_")] if role.startswith("ood_") else task_config["data"][role]

    def source_file(self, task: str, role: str) -> str:
        """Hub datasets are fetched once into resources/; local and package files are read where they are."""
        source = self.source_entry(task, role)
        return layout.DATASET.format(task=task, role=role) if source.get("hub") else str(resolve_path(source))

    def corpus_file(self, name: str) -> str:
        return str(corpus_path(self.config["corpora"][name], layout.CORPUS.format(corpus=name)))

    def teacher_settings(self, model: str) -> dict:
        """The prompted teacher's settings: the model's distillation shots and the fine-tuning pattern (its batch
        is a run setting)."""
        finetune = self.stage("finetune", model)
        return {"shots": finetune["distill"]["shots"], "pattern": finetune["pattern"], "dtype": "auto"}

    def instruction_sets(self, model: str) -> dict[str, str]:
        """An instruction-tuned model's sets: corpora (corpus_<name>) and tasks' instruction samples (task_<name>)."""
        settings = self.stage("instruct", model)
        return {f"corpus_{name}": self.corpus_file(name) for name in settings["data"]} | {
            f"task_{task}": layout.sample_path(task, "instructions") for task in settings["tasks"]}

    def classifier_cell(self, model: str) -> tuple[str, int, int]:
        """(task, k, seed) of a derived classifier's training sample."""
        classifier = self.config["models"][model]["classifier"]
        return classifier["task"], classifier["k"], classifier["seed"]

    def computed_config(self) -> dict:
        """The config without how jobs run (threads, requests, mem_mb, checkpoint cadence, inference batch sizes):
        what the results depend on."""
        config = self.config
        computed = {key: value for key, value in config.items() if key not in ("threads", "requests")}
        computed["finetune"] = _without_run_settings("finetune", {
            k: v for k, v in config["finetune"].items() if k not in FINETUNE_RUN_SETTINGS})
        computed["instruct"] = {k: v for k, v in config["instruct"].items() if k != "checkpoint_every"}
        for stage in ("extract", "icl"):
            computed[stage] = _without_run_settings(stage, config[stage])
        computed["models"] = {name: {k: _without_run_settings(k, v) if k in ("extract", "icl", "finetune") else v
                                     for k, v in spec.items() if k != "mem_mb"}
                              for name, spec in config["models"].items()}
        return computed

    # ------------------------------------------------------------ params, by rule

    def _params_fetch_data(self, task, role):
        return {"source": as_arg(dataset_identity(self.source_entry(task, role)))}

    def _params_fetch_corpus(self, corpus):
        return {"source": as_arg(dataset_identity(self.config["corpora"][corpus]))}

    def _params_fetch_model(self, model):
        return {"model": as_arg(model_identity(self.config["models"][model]))}

    def _params_sample(self, task, sample):
        """The task settings one sample depends on (a training sample also on the demonstration pool it stays
        clear of; an out-of-domain sample only on its own source) and the --split arguments naming it."""
        name, task_config = SampleName.parse(sample), self.config["tasks"][task]
        split = f"--split {name.role}" + "".join(
            f" --{key} {value}" for key, value in (("k", name.k), ("seed", name.seed)) if value is not None)
        keys = ("fields", "labels", "data", "n_test")
        # no default: no existing sample reruns
        overlap = [key for key in ("overlap", "ood") if "overlap" in task_config]
        if name.split == "ood":
            settings = as_arg({"fields": task_config["fields"], "labels": task_config["labels"],
                               "ood": {name.ood: task_config["ood"][name.ood]}})
        elif name.split == "test":
            settings = self.task_slice(task, *keys)
        elif name.split == "instructions":
            settings = self.task_slice(task, *keys, "instructions", *overlap)
        else:
            settings = self.task_slice(task, *keys, *overlap, demonstrations=self.pool_size(task))
        return {"task": settings, "split": split, "test_seed": self.config["test_seed"]}

    def _params_extract(self, model, task, prompt, sample):
        extra = {"dtype": "auto"}
        if prompt != "none":  # the prefix's size only with a prefix
            extra["shots"] = self.stage("extract", model)["shots"]
        return {"task": self.task_prompting(task), "settings": self.stage_settings("extract", model, **extra)}

    def _params_probe(self, model, task, prompt, k, seed):
        cell = self.cell_of(model=model, task=task, prompt=prompt, k=k, seed=seed)
        return {"settings": as_arg(self.config["probe"]), "cell": as_arg(cell), "samples": self.eval_arg(task)}

    def _params_bow(self, task, k, seed):
        """The bag-of-words settings; a full-training-set job (k "all") adds its validation share. Its rows carry
        model and prompt `none`, so that they sit in the same tables as the models'."""
        bow = self.config["bow"]
        section = {key: value for key, value in bow.items() if key not in SELECTIONS + ("full_train",)}
        if str(k) == "all" and "validation" in bow["full_train"]:
            section["validation"] = bow["full_train"]["validation"]
        keys = self.cell_of(task=task, k=k, seed=seed) | {"model": "none", "prompt": "none"}
        return {"settings": as_arg(section), "cell": as_arg(keys), "evals": self.eval_arg(task)}

    def _params_icl(self, model, task, shots, seed):
        cell = self.cell_of(model=model, task=task, shots=shots, seed=seed)
        return {"task": self.task_prompting(task), "settings": self.stage_settings("icl", model, dtype="auto"),
                "cell": as_arg(cell), "evals": self.eval_arg(task)}

    def _params_teacher(self, model, task, k, seed):
        return {"task": self.task_prompting(task), "settings": as_arg(self.teacher_settings(model))}

    def _params_finetune(self, model, task, method, k, seed):
        """Its method's settings only, so that a LoRA setting reruns LoRA jobs alone."""
        return {"task": self.task_prompting(task), "settings": self.method_settings(method, model),
                "cell": as_arg(self.cell_of(model=model, task=task, method=method, k=k, seed=seed)),
                "evals": self.eval_arg(task), "launcher": self.launcher(model)}

    def _params_instruct(self, model):
        """What an instruction-tuned model computes with (its sets are inputs; checkpoint cadence is how it runs)."""
        settings = self.stage("instruct", model)
        computed = {key: value for key, value in settings.items() if key not in ("data", "tasks", "checkpoint_every")}
        return {"settings": as_arg(computed),
                "corpora": as_arg({name: self.config["corpora"][name] for name in settings["data"]}),
                "launcher": self.launcher(model)}

    def _params_classifier(self, model):
        task, k, seed = self.classifier_cell(model)
        return {"task": f"--task {task} --task-config {self.task_slice(task, 'fields', 'labels', 'prompt')}",
                "settings": self.method_settings("head", model),
                "cell": as_arg({"task": task, "model": model, "method": "head", "k": k, "seed": seed}),
                "evals": self.eval_arg(task), "launcher": self.launcher(model)}

    def _params_ppo(self, model):
        ppo = self.stage("ppo", model)
        return {"settings": as_arg(ppo), "corpus": as_arg(self.config["corpora"][ppo["prompts"]["corpus"]])}

    def _params_preflight(self):
        """What makes the plan stale: the grid and its prompts, fine-tuning and GPU settings; not the probe, bag-of-
        words or table settings, no Slurm request (mem_mb, threads) and no batch size, so changing those does not
        rerun it (the rule passes the whole config, how jobs run included, as a derived param)."""
        plan = {key: value for key, value in self.computed_config().items() if key not in ("probe", "aggregate", "bow")}
        plan["bow"] = {key: self.config["bow"][key] for key in ("tasks", "full_train") if key in self.config["bow"]}
        return {"config": as_arg(plan)}

    def _params_aggregate(self):
        return {"settings": as_arg(self.config["aggregate"])}

    def _params_resolved_config(self):
        """The config for the report: everything a result depends on, defaults filled in."""
        return {"config": as_arg(self.computed_config())}

    # ------------------------------------------------------------ inputs computed from the cell, by rule

    def _inputs_sample(self, task, sample):
        """An out-of-domain set reads its own source; every other sample the train pool (test may be carved from
        it), the test split if declared, and the out-of-domain sets where the task drops the training rows they
        share a text with (tasks.<task>.overlap: drop)."""
        if sample.startswith("ood_"):
            return {sample: self.source_file(task, sample)}
        task_config = self.config["tasks"][task]
        roles = ["train"] + (["test"] if "test" in task_config["data"] else [])
        if sample != "test" and task_config.get("overlap") == "drop":
            roles += [f"ood_{name}" for name in task_config["ood"]]
        return {role: self.source_file(task, role) for role in roles}

    def _inputs_extract(self, model, task, prompt, sample):
        seed = layout.prefix_seed(prompt)
        return {"model": self.model_dir(model), "demos": [] if seed is None else self.pool_file(task, seed)}

    def _inputs_probe(self, model, task, prompt, k, seed):
        folder = layout.prompt_folder(prompt, seed)
        samples = {"train": layout.train_sample(k, seed)} | {split: split for split in self.eval_splits(task)}
        return {role: layout.ACTIVATIONS.format(model=model, task=task, prompt=folder, sample=sample)
                for role, sample in samples.items()} | {"samples": self.eval_samples(task)}

    def _inputs_bow(self, task, k, seed):
        return {"evals": self.eval_samples(task)}

    def _inputs_icl(self, model, task, shots, seed):
        return {"model": self.model_dir(model), "demos": self.pool_file(task, seed, shots),
                "evals": self.eval_samples(task)}

    def _inputs_teacher(self, model, task, k, seed):
        shots = self.teacher_settings(model)["shots"]
        return {"model": self.model_dir(model), "demos": self.pool_file(task, seed, shots)}

    def _inputs_finetune(self, model, task, method, k, seed):
        teacher = layout.TEACHER.format(model=model, task=task, k=k, seed=seed) if METHODS[method].teacher else []
        return {"model": self.model_dir(model), "evals": self.eval_samples(task), "teacher": teacher}

    def _inputs_instruct(self, model):
        return self.instruction_sets(model) | {"base": self.model_dir(self.config["models"][model]["base"])}

    def _inputs_classifier(self, model):
        task, k, seed = self.classifier_cell(model)
        return {"base": self.model_dir(self.config["models"][model]["base"]),
                "train": layout.sample_path(task, layout.train_sample(k, seed)), "evals": self.eval_samples(task)}

    def _inputs_ppo(self, model):
        ppo = self.stage("ppo", model)
        return {"base": self.model_dir(self.config["models"][model]["base"]),
                "reward": self.model_dir(ppo["reward"]["model"]), "prompts": self.corpus_file(ppo["prompts"]["corpus"])}

    def _inputs_preflight(self):
        """Every sample; the fetched folders the grid's models come from (a derived model's root; the reward
        models'), read before any model is trained; the instruction sets it costs instruction tuning on."""
        used = {cell["model"] for cells in self.grid.values() for cell in cells if "model" in cell}
        needed = sorted(used) + derived_models(self.config) + sorted(reward_models(self.config))
        return {"models": sorted({self.model_dir(root_model(self.config, model)) for model in needed}),
                "samples": self.sample_targets(),
                "instructions": sorted({path for model in derived_models(self.config, "instruct")
                                        for path in self.instruction_sets(model).values()})}

    def _inputs_aggregate(self):
        return {"metrics": [stage.metrics.format(**cell) for name, stage in STAGES.items()
                            for cell in self.grid[name]]}

    def _inputs_derived_summary(self):
        return {"metrics": [layout.DERIVE_METRICS.format(model=model) for model in derived_models(self.config)]}

    # ------------------------------------------------------------ every job, by rule

    def sample_names(self) -> list[tuple[str, str]]:
        """(task, sample name) of each task's training samples, its seeds' demonstration pools (where its prompts
        have demonstrations) and its evaluation samples."""
        config, names = self.config, []
        for task in sorted(config["tasks"]):
            names += [(task, layout.train_sample(k, seed))
                      for k in config["tasks"][task]["k"] for seed in config["seeds"]]
            if self.pool_size(task):
                names += [(task, layout.demonstration_pool(seed)) for seed in config["seeds"]]
            names += [(task, split) for split in self.eval_splits(task)]
        return names

    def sample_targets(self) -> list[str]:
        return [layout.sample_path(task, name) for task, name in self.sample_names()]

    def cells(self) -> dict[str, list[dict]]:
        """Every job of the grid, by rule, as its cell (the rule's wildcards): the targets' cells and every job
        they need. Local and one-off jobs (fetches, the report's) are left out but preflight, aggregate and
        resolved_config, whose params matter."""
        config, cells = self.config, {stage: list(self.grid.get(stage, [])) for stage in
                                      ("probe", "bow", "icl", "finetune", "instruct", "classifier", "ppo")}
        samples = set(self.sample_names())
        samples |= {(cell["task"], layout.train_sample(cell["k"], cell["seed"])) for cell in cells["bow"]}
        samples |= {(task, "instructions") for model in derived_models(config, "instruct")
                    for task in self.stage("instruct", model)["tasks"]}
        samples |= {(task, layout.train_sample(k, seed)) for task, k, seed in
                    (self.classifier_cell(model) for model in derived_models(config, "classifier"))}
        cells["sample"] = [dict(task=task, sample=name) for task, name in sorted(samples)]
        extracts = {(c["model"], c["task"], layout.prompt_folder(c["prompt"], c["seed"]), sample)
                    for c in cells["probe"]
                    for sample in [layout.train_sample(c["k"], c["seed"])] + self.eval_splits(c["task"])}
        cells["extract"] = [dict(model=m, task=t, prompt=p, sample=s) for m, t, p, s in sorted(extracts)]
        cells["teacher"] = [dict(model=m, task=t, k=k, seed=s) for m, t, k, s in sorted(
            {(c["model"], c["task"], c["k"], c["seed"]) for c in cells["finetune"] if METHODS[c["method"]].teacher})]
        cells.update(preflight=[{}], aggregate=[{}], resolved_config=[{}])
        return cells
