"""lmadapt: how well does a decoder LM adapt to a classification task? Probes, ICL, fine-tuning, distillation."""

__version__ = "0.1.0"
