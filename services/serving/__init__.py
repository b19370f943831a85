"""serving: the champion of every registered model behind the Open Inference Protocol v2, hot-swapped
on promotion without failing a request, with sampled predictions logged for the monitor."""
