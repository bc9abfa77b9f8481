from .sem_seg_evaluation import ClearCLIPSemSegEvaluator, load_label_map

__all__ = ["ClearCLIPSemSegEvaluator", "load_label_map"]
