"""What the tests share: clients, fakes, fixtures and process starters.

Test modules import from here and never from one another: a helper defined in a test module
ties that module's name and layout to every test that borrows it, and the next engineer
moving a test breaks tests elsewhere. tests/test_layers.py checks the rule."""
