"""An autoregressive LSTM controller that emits a sequence of discrete choices (Zoph & Le 2017)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.distributions import Categorical


class Controller(nn.Module):
    """One LSTM step per decision; step ``i`` chooses among ``num_choices[i]`` options.

    Every step has its own softmax head and its own choice embeddings; the embedding of the
    choice taken at step ``i`` is the LSTM input of step ``i + 1`` (a learned vector starts).
    ``tanh_c`` bounds the logits as ``c * tanh(logits)`` (ENAS), 0 disables it.
    """

    def __init__(self, num_choices: Sequence[int], hidden: int = 64, tanh_c: float = 2.5,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if not num_choices or min(num_choices) < 1:
            raise ValueError("every step needs at least one choice")
        self.num_choices = [int(n) for n in num_choices]
        self.hidden, self.tanh_c, self.temperature = hidden, tanh_c, temperature
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.num_choices)
        self.embeds = nn.ModuleList(nn.Embedding(n, hidden) for n in self.num_choices)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def _logits(self, h: torch.Tensor, step: int) -> torch.Tensor:
        logits = self.heads[step](h) / self.temperature
        return self.tanh_c * torch.tanh(logits) if self.tanh_c else logits

    def _run(self, actions: Sequence[int] | None, generator: torch.Generator | None
             ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        x, state = self.start, None
        chosen: list[int] = []
        logp = self.start.new_zeros(())
        ent = self.start.new_zeros(())
        for i in range(len(self.num_choices)):
            state = self.lstm(x, state)
            dist = Categorical(logits=self._logits(state[0], i)[0])
            if actions is None:
                a = int(torch.multinomial(dist.probs.detach(), 1, generator=generator))
            else:
                a = int(actions[i])
            chosen.append(a)
            logp = logp + dist.log_prob(torch.tensor(a))
            ent = ent + dist.entropy()
            x = self.embeds[i](torch.tensor([a]))
        return chosen, logp, ent

    def sample(self, generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(choice indices, summed log-probability, summed entropy); the last two carry gradients."""
        return self._run(None, generator)

    def log_prob(self, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed log-probability, summed entropy) of a given choice sequence."""
        if len(actions) != len(self.num_choices):
            raise ValueError(f"expected {len(self.num_choices)} choices, got {len(actions)}")
        _, logp, ent = self._run(actions, None)
        return logp, ent
