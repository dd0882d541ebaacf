"""Drives a Sluice gateway with the official openai SDK and prints what it saw as JSON.

Usage: openai_client.py BASE_URL MODEL
"""
import json
import sys

import openai


def retry_after_429(base_url: str, model: str, key: str) -> None:
    """One call with the SDK's own retries on (the gateway counts the 429s it sent)."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=3, timeout=60)
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    print(json.dumps({"text": completion.choices[0].message.content}))


def main() -> None:
    if sys.argv[1] == "retry":
        retry_after_429(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Say hello"}]
    out = {}

    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
    out["non_stream"] = {
        "text": completion.choices[0].message.content,
        "finish_reason": completion.choices[0].finish_reason,
        "usage": completion.usage.model_dump() if completion.usage else None,
    }

    text, finish, usage, chunks = "", None, None, 0
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                finish = choice.finish_reason
    out["stream"] = {"text": text, "finish_reason": finish, "usage": usage, "chunks": chunks}

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        out["not_found"] = None
    except openai.NotFoundError as e:
        out["not_found"] = {"status": e.status_code, "code": e.code}

    try:
        client.chat.completions.create(model=model, messages=messages, temperature=5)
        out["bad_request"] = None
    except openai.BadRequestError as e:
        out["bad_request"] = {"status": e.status_code, "param": e.param}

    out["models"] = [m.id for m in client.models.list()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
