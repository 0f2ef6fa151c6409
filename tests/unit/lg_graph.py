"""A small LangGraph graph for the checkpointer tests (importable by workers)."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class State(TypedDict):
    log: Annotated[list, operator.add]
    n: int


def step(state: State) -> dict[str, Any]:
    return {"log": [f"step {state['n']}"], "n": state["n"] + 1}


def build() -> Any:
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(State)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return graph
