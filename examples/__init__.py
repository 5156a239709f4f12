"""Example services built on gateway.responder: orders, customers, basket, echo."""
