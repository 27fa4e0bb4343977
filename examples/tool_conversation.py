"""A two-step tool conversation through the Sekha Router.

The model is offered one tool, `get_weather`. When it calls the tool (once per city, possibly
several calls in one turn), this program runs the calls locally, sends the results back as tool
messages, and prints the model's final answer with what the whole conversation cost.

    python examples/tool_conversation.py --target 127.0.0.1:50051 "Weather in Paris and Oslo?"

Only the `sekha-client` package is needed (`pip install ./clients/python`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from sekha.client import (
    ConnectionConfig,
    RouterClient,
    append_tool_results,
    tool,
    tool_arguments,
    user,
)
from sekha.router.v1 import router_service_pb2 as rt

WEATHER_TOOL = tool(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
    "Current weather in a city",
)
MAX_ROUNDS = 4  # a model that keeps calling tools is stopped rather than looped forever


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """A stand-in for a real weather service: deterministic, so the example is testable."""
    celsius = 10 + sum(map(ord, city.lower())) % 20
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit}


def run_tool(call: rt.ToolCall) -> dict[str, Any]:
    """One tool call's result; a bad call is answered with an error the model can read."""
    if call.name != "get_weather":
        return {"error": f"unknown tool {call.name}"}
    try:
        arguments = tool_arguments(call)
        return get_weather(**arguments)
    except (ValueError, TypeError) as exc:
        return {"error": f"bad arguments: {exc}"}


async def converse(router: RouterClient, question: str) -> tuple[rt.ChatResponse, float | None]:
    """Ask, run the tools the model calls, answer them, until the model answers in text.

    Returns the final reply and what the conversation cost (None when a price is unknown).
    """
    request = rt.ChatRequest(messages=[user(question)], tools=[WEATHER_TOOL])
    spent: float | None = 0.0
    for _ in range(MAX_ROUNDS):
        reply = await router.chat(request)
        spent = None if spent is None or reply.cost.price_unknown else spent + reply.cost.cost_usd
        if not reply.tool_calls:
            return reply, spent
        results = {call.id: run_tool(call) for call in reply.tool_calls}
        append_tool_results(request.messages, reply, results)
    raise RuntimeError(f"no answer after {MAX_ROUNDS} rounds of tool calls")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the weather in Paris?")
    parser.add_argument("--target", default="127.0.0.1:50051", help="the Router's host:port")
    args = parser.parse_args(argv)
    async with RouterClient(ConnectionConfig(args.target)) as router:
        reply, spent = await converse(router, args.question)
    print(reply.text)
    cost = "price unknown" if spent is None else f"${spent:.6f}"
    print(f"[{reply.attempts[-1].provider_id}/{reply.response_model}, {cost}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
