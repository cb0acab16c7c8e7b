"""turbospec: terminal benchmarking and observability for LLM inference.

Import map (see DESIGN.md): ``turbospec.trace`` and ``turbospec.results`` are the contracts
(trace schema, sweep result rows); ``turbospec.engine`` is the inference engine;
``turbospec.tui`` the dashboard; ``turbospec.analysis`` the pandas reports.
"""

__version__ = "0.1.0"
