"""Istio's wire contracts: our ``.proto`` sources (Istio's package, message names and field numbers)
and the Python code generated from them (``make proto``). Pure: protobuf messages only; the gRPC
service stub the tests use as a client is generated into ``mesh/testing``."""
