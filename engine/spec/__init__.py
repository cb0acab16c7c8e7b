"""turbospec.engine.spec — speculative decoding.

- ``base``: the Drafter interface (begin / draft / accept / prepare_next / cancel / close), the
  Round and Proposal records, the depth-2 worker and the skip-streak rule
- ``ngram``: prompt-lookup drafting; ``draft_model``: a small model with the target's vocabulary;
  ``mtp``: the MTP assistant (when present)
- ``verify``: greedy prefix + bonus, speculative rejection sampling
- ``loop``: the speculative generation loop (SpecConfig, generate_spec) and its trace lines
"""
