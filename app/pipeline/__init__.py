"""The action language: node schemas, bindings, conditions and the engine that walks them."""
