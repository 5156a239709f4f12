"""Example services built on the SDK (gateway_sdk): orders, customers, basket, echo."""
