"""Fake OpenAI, WhatsApp Cloud API and Twilio servers for end-to-end tests, benchmarks and `make up`.

Run with `python -m fakes`; see `fakes.server` for the options and the control API.
Only aiohttp is needed: this package must never import Django.
"""
