"""The OpenAI-compatible vendors of the field, one small module each: where the API lives, its
key variable, its default model, its extra parameters and its error codes, as a `Vendor`
preset of `OpenAICompatibleClient`. Each is listed in the registry (`llmstreams.providers`)."""
