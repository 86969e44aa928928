"""llm-extproc: an Envoy ext_proc server that routes LLM requests across GPU fleets."""

__version__ = "0.1.0"
