"""Helpers shared by the test modules, one concern per module (the fixtures built from them are in conftest.py):

- `models`: the tiny models and the byte-level chat tokenizer every test builds, with their shapes and seeds;
- `data`: small SFT / DPO datasets and JSON-lines files;
- `recipes`: running the recipes as a user would (`accelerate launch`, their environment, their results);
- `distributed`: a multi-process run's adapter and logs against its single-process reference;
- `replay`: a tiny base that ends some of its replies, and the replay prompts it answers;
- `training`: a few optimizer steps on a model, and adapter tensors moved off their identity start;
- `ports`: a TCP port free on 127.0.0.1 right now;
- `forked_runs`: entry points as real processes forked from one worker that has imported the libraries;
- `hub_server`: an offline, in-process stand-in for the Hugging Face Hub HTTP API.
"""
