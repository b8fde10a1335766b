"""Per-task-kind rules shared by a spider and its middlewares (e.g. seed 000's batches)."""
