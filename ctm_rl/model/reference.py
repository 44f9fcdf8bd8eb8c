"""A deliberately plain CTM forward pass, written from the algorithm's definition, sharing a
``ContinuousThoughtMachine``'s parameters. The optimised module must reproduce it."""

import torch
import torch.nn.functional as F


def reference_nlms(ctm, pre_trace):
    """Each neuron's private MLP over its own history, one neuron at a time. pre_trace: (B, D, M) -> (B, D)."""
    outputs = []
    for neuron in range(ctm.d_model):
        x = pre_trace[:, neuron]  # (B, M)
        for layer in ctm.nlms.layers:
            if isinstance(layer, torch.nn.GLU):
                x = F.glu(x, dim=-1)
            else:
                x = x @ layer.weight[neuron] + layer.bias[neuron]
        outputs.append(x.squeeze(-1))
    return torch.stack(outputs, dim=1)


def reference_synchronisation(ctm, post_trace):
    """sum_t w_p(t) z_l(t) z_r(t) / sqrt(sum_t w_p(t)) from the whole batch-major trace (B, D, M)."""
    sync = ctm.synchronisation
    rate = sync.decay.clamp(0.0, sync.max_decay)
    age = torch.arange(ctm.memory_length - 1, -1, -1, dtype=torch.float32)
    weights = torch.exp(-rate[:, None] * age[None, :])  # (P, M)
    products = post_trace[:, sync.left] * post_trace[:, sync.right]  # (B, P, M)
    return (products * weights).sum(-1) / weights.sum(-1).sqrt()


def reference_forward(ctm, features, traces, episode_starts):
    """features (L, B, F); traces batch-major (B, D, M) each; episode_starts (L, B)."""
    pre, post = traces
    synapses = ctm.synapses
    # The synapses' input layer as one linear map over the concatenated (features, post-activations).
    input_weight = torch.cat((synapses.feature_weight, synapses.recurrent_weight), dim=1)
    synapse_net = lambda x: synapses.body(torch.nn.functional.linear(x, input_weight, synapses.bias))  # noqa: E731
    outputs = []
    for step in range(features.shape[0]):
        start = episode_starts[step].bool().view(-1, 1, 1)
        pre = torch.where(start, ctm.start_pre_trace, pre)
        post = torch.where(start, ctm.start_post_trace, post)
        for _ in range(ctm.ticks):
            pre_activation = synapse_net(torch.cat((features[step], post[:, :, -1]), dim=-1))
            pre = torch.cat((pre[:, :, 1:], pre_activation.unsqueeze(-1)), dim=-1)
            post = torch.cat((post[:, :, 1:], reference_nlms(ctm, pre).unsqueeze(-1)), dim=-1)
        outputs.append(reference_synchronisation(ctm, post))
    return torch.stack(outputs), (pre, post)
