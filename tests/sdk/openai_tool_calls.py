"""Reads a tool call through the official `openai` SDK, streamed (with the SDK's own stream
accumulator) and not, and prints what the SDK made of it as JSON.

    python3 openai_tool_calls.py BASE_URL MODEL
"""

import json
import sys

import openai


def call_of(message):
    call = message.tool_calls[0]
    return {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "Look it up"}]
    report = {}
    done = client.chat.completions.create(model=model, messages=messages)
    report["non_stream"] = call_of(done.choices[0].message)
    report["non_stream"]["finish_reason"] = done.choices[0].finish_reason
    with client.chat.completions.stream(model=model, messages=messages) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    report["stream"] = call_of(final.choices[0].message)
    report["stream"]["finish_reason"] = final.choices[0].finish_reason
    print(json.dumps(report))


if __name__ == "__main__":
    main()
