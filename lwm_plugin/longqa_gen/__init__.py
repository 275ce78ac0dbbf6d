"""Long-context QA data (paper Sec. 3.3) with a model: generators, the Beam pipeline, `lwm-make-qa`.

The model-free core (chunking, prompt, parse rule, assembly) is `data_loaders.longqa`.
"""
