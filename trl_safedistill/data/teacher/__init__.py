"""``trl-safedistill teach``: rationales from an OpenAI-compatible teacher, filtered, resumable.

One idea per module:

* :mod:`.prompts`: the few-shot chain-of-thought prompt (chat messages or a completion prompt) and
  where its exemplars come from;
* :mod:`.run`: the run loop: requests in a bounded thread pool, the answer-consistency filter, the
  resumable output (:mod:`~trl_safedistill.data.ledger`), the per-task summary, and the stop after
  too many consecutive failed requests;
* :mod:`.cli`: ``main(argv)``, the command line.

The connection itself is :mod:`~trl_safedistill.data.openai_client` (the ``openai`` SDK).
"""
