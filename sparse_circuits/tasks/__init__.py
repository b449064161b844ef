"""Tasks: the paper's binary next-token tasks and how a model is scored on them.

- `suite`: the generators of the paired prompts (paper Table 1; docs/tasks.md).
- `binary`: prompts as token arrays (`TaskData`), user tasks from JSONL, a
  model's task loss and accuracy.
- `scoring`: the logit difference, the calibration sign and the hard step the
  pruning search trains through.
"""
