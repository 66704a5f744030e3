"""How a round runs: sampling, the train exchange (plain or secure), reply sorting, checks."""
