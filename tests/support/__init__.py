"""What the tests share: the fake upstream, the stack, fault and spend helpers."""
