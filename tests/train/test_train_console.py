"""The lines a run writes to stderr for the person watching (train/metrics.py)."""

from __future__ import annotations

import math

from scratchlm.train.metrics import eval_line, train_line

ROW = {"step": 120, "loss": 3.14159, "lr": 3e-4, "grad_norm": 0.51234, "tokens_per_s": 48689.5, "mfu": 0.2141,
       "elapsed_s": 185.2}


def test_a_training_line_has_the_figures_a_log_reader_looks_for():
    line = train_line(ROW, max_steps=300)
    assert line == "step 120/300  loss 3.1416  lr 3.00e-04  grad_norm 0.512  48,690 tok/s  mfu 21.4%  3m05s"
    assert train_line(ROW).startswith("step 120  loss")  # a token or time budget: no step total
    assert train_line({**ROW, "elapsed_s": 7384.0}).endswith("  2h03m")
    assert " loss nan " in train_line({**ROW, "loss": math.nan})  # a bad step still makes a line


def test_an_evaluation_line_marks_the_best_and_keeps_the_sample_on_one_line():
    row = {"step": 300, "val_loss": 2.5, "val_bpb": 1.1, "sample": 'He said "hi"\nand left'}
    line = eval_line(row, best_val_loss=2.5)
    assert line == 'step 300  val_loss 2.5000  val_bpb 1.1000  (best)  sample "He said \\"hi\\"\\nand left"'
    assert "(best)" not in eval_line(row, best_val_loss=2.4)
    long = eval_line({"step": 5, "sample": "é" * 500})
    assert long == "step 5  sample " + '"' + "é" * 160 + '"…'  # no val split: the sample alone
