"""RMVPE pitch estimator (the RVC default), implemented here so a local ``rmvpe.pt`` loads without RVC.

Architecture and decoding follow docs/rvc-reference.md §2.1: ``E2E(n_blocks=4, n_gru=1, kernel_size=(2, 2))`` = a
deep U-Net (5 encoder/decoder levels, 4 intermediate blocks, 16 base channels) over a 128-bin log-mel,
a 3-channel conv, a BiGRU(384 -> 2x256), Linear(512 -> 360) and a sigmoid. Module names match the
``rmvpe.pt`` state dict that RVC and Applio ship, so ``load_state_dict(strict=True)`` works on it.

Shapes: ``wav_16k [N]`` -> log-mel ``[1, 128, N//160 + 1]`` -> salience ``[N//160 + 1, 360]`` -> f0 ``[N//160 + 1]`` Hz.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvc_ray.features.state_dicts import find_state_dict_mismatch

if TYPE_CHECKING:
    import torch

__all__ = [
    "RMVPE_CENTS_OFFSET",
    "RMVPE_THRESHOLD",
    "RmvpePitchExtractor",
    "build_rmvpe_network",
    "compute_rmvpe_f0_from_salience",
    "load_rmvpe_network",
]

RMVPE_CENTS_OFFSET = 1997.3794084376191
RMVPE_THRESHOLD = 0.03
_N_MELS = 128
_N_FFT = 1024
_HOP = 160
_MEL_FMIN = 30.0
_MEL_FMAX = 8000.0


def _network_classes():  # noqa: C901 - a closed set of small nn.Modules, defined lazily (torch import)
    import torch
    from torch import nn

    class ConvBlockRes(nn.Module):
        def __init__(self, in_channels: int, out_channels: int, momentum: float = 0.01):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, (3, 3), (1, 1), (1, 1), bias=False),
                nn.BatchNorm2d(out_channels, momentum=momentum),
                nn.ReLU(),
                nn.Conv2d(out_channels, out_channels, (3, 3), (1, 1), (1, 1), bias=False),
                nn.BatchNorm2d(out_channels, momentum=momentum),
                nn.ReLU(),
            )
            self.is_shortcut = in_channels != out_channels
            if self.is_shortcut:
                self.shortcut = nn.Conv2d(in_channels, out_channels, (1, 1))

        def forward(self, x):
            return self.conv(x) + (self.shortcut(x) if self.is_shortcut else x)

    class ResEncoderBlock(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, n_blocks=1, momentum=0.01):
            super().__init__()
            self.conv = nn.ModuleList([ConvBlockRes(in_channels, out_channels, momentum)])
            self.conv.extend(ConvBlockRes(out_channels, out_channels, momentum) for _ in range(n_blocks - 1))
            self.kernel_size = kernel_size
            if kernel_size is not None:
                self.pool = nn.AvgPool2d(kernel_size=kernel_size)

        def forward(self, x):
            for block in self.conv:
                x = block(x)
            if self.kernel_size is None:
                return x
            return x, self.pool(x)

    class Encoder(nn.Module):
        def __init__(self, in_channels, in_size, n_encoders, kernel_size, n_blocks, out_channels=16, momentum=0.01):
            super().__init__()
            self.bn = nn.BatchNorm2d(in_channels, momentum=momentum)
            self.layers = nn.ModuleList()
            for _ in range(n_encoders):
                self.layers.append(ResEncoderBlock(in_channels, out_channels, kernel_size, n_blocks, momentum))
                in_channels, out_channels, in_size = out_channels, out_channels * 2, in_size // 2
            self.out_channel = out_channels

        def forward(self, x):
            skips = []
            x = self.bn(x)
            for layer in self.layers:
                skip, x = layer(x)
                skips.append(skip)
            return x, skips

    class Intermediate(nn.Module):
        def __init__(self, in_channels, out_channels, n_inters, n_blocks, momentum=0.01):
            super().__init__()
            self.layers = nn.ModuleList([ResEncoderBlock(in_channels, out_channels, None, n_blocks, momentum)])
            self.layers.extend(
                ResEncoderBlock(out_channels, out_channels, None, n_blocks, momentum) for _ in range(n_inters - 1)
            )

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    class ResDecoderBlock(nn.Module):
        def __init__(self, in_channels, out_channels, stride, n_blocks=1, momentum=0.01):
            super().__init__()
            out_padding = (0, 1) if stride == (1, 2) else (1, 1)
            self.conv1 = nn.Sequential(
                nn.ConvTranspose2d(in_channels, out_channels, (3, 3), stride, (1, 1), out_padding, bias=False),
                nn.BatchNorm2d(out_channels, momentum=momentum),
                nn.ReLU(),
            )
            self.conv2 = nn.ModuleList([ConvBlockRes(out_channels * 2, out_channels, momentum)])
            self.conv2.extend(ConvBlockRes(out_channels, out_channels, momentum) for _ in range(n_blocks - 1))

        def forward(self, x, skip):
            x = torch.cat((self.conv1(x), skip), dim=1)
            for block in self.conv2:
                x = block(x)
            return x

    class Decoder(nn.Module):
        def __init__(self, in_channels, n_decoders, stride, n_blocks, momentum=0.01):
            super().__init__()
            self.layers = nn.ModuleList()
            for _ in range(n_decoders):
                self.layers.append(ResDecoderBlock(in_channels, in_channels // 2, stride, n_blocks, momentum))
                in_channels //= 2

        def forward(self, x, skips):
            for i, layer in enumerate(self.layers):
                x = layer(x, skips[-1 - i])
            return x

    class DeepUnet(nn.Module):
        def __init__(self, kernel_size, n_blocks, en_de_layers=5, inter_layers=4, in_channels=1, en_out_channels=16):
            super().__init__()
            self.encoder = Encoder(in_channels, _N_MELS, en_de_layers, kernel_size, n_blocks, en_out_channels)
            self.intermediate = Intermediate(
                self.encoder.out_channel // 2, self.encoder.out_channel, inter_layers, n_blocks
            )
            self.decoder = Decoder(self.encoder.out_channel, en_de_layers, kernel_size, n_blocks)

        def forward(self, x):
            x, skips = self.encoder(x)
            return self.decoder(self.intermediate(x), skips)

    class BiGRU(nn.Module):
        def __init__(self, input_features, hidden_features, num_layers):
            super().__init__()
            self.gru = nn.GRU(
                input_features, hidden_features, num_layers=num_layers, batch_first=True, bidirectional=True
            )

        def forward(self, x):
            return self.gru(x)[0]

    class RmvpeNetwork(nn.Module):
        """RVC's ``E2E``: log-mel ``[B, 128, F]`` (F a multiple of 32) -> salience ``[B, F, 360]`` in (0, 1)."""

        def __init__(self, n_blocks=4, n_gru=1, kernel_size=(2, 2), en_de_layers=5, inter_layers=4, en_out_channels=16):
            super().__init__()
            self.unet = DeepUnet(kernel_size, n_blocks, en_de_layers, inter_layers, 1, en_out_channels)
            self.cnn = nn.Conv2d(en_out_channels, 3, (3, 3), padding=(1, 1))
            self.fc = nn.Sequential(BiGRU(3 * _N_MELS, 256, n_gru), nn.Linear(512, 360), nn.Dropout(0.25), nn.Sigmoid())

        def forward(self, mel):
            x = mel.transpose(-1, -2).unsqueeze(1)
            x = self.cnn(self.unet(x)).transpose(1, 2).flatten(-2)
            return self.fc(x)

    return RmvpeNetwork


def build_rmvpe_network(**sizes: int) -> torch.nn.Module:
    """A randomly initialised RMVPE network in eval mode: ``E2E(4, 1, (2, 2))`` (90.4 M parameters).

    ``sizes`` (``n_blocks``, ``inter_layers``, ``en_de_layers``, ``en_out_channels``) shrink it for tests only;
    ``rmvpe.pt`` needs the defaults.
    """
    return _network_classes()(**sizes).eval()


def load_rmvpe_network(path: Path, device: str = "cpu", network: torch.nn.Module | None = None) -> torch.nn.Module:
    """Load ``rmvpe.pt`` (a plain state dict, fp16 or fp32) into ``network`` (default: the full E2E), strictly.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a torch checkpoint, or its keys/shapes are not RMVPE's (named).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RMVPE weights {path} do not exist (features.rmvpe_path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"{path}: cannot be read as a torch checkpoint of RMVPE weights: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (mapping of tensor names), got {type(state).__name__}")
    net = network if network is not None else build_rmvpe_network()
    mismatch = find_state_dict_mismatch(net.state_dict(), state)
    if mismatch:
        raise ValueError(f"{path}: not an RMVPE E2E(4, 1, (2, 2)) state dict: {mismatch.summary(limit=5)}")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def compute_rmvpe_log_mel(wav_16k: torch.Tensor) -> torch.Tensor:
    """Log-mel of RVC's RMVPE front end: ``[N]`` -> ``[1, 128, N//160 + 1]`` (htk mel, 30-8000 Hz, clamp 1e-5)."""
    import librosa
    import torch

    mel_basis = torch.from_numpy(
        librosa.filters.mel(sr=16000, n_fft=_N_FFT, n_mels=_N_MELS, fmin=_MEL_FMIN, fmax=_MEL_FMAX, htk=True)
    ).to(wav_16k.device, torch.float32)
    window = torch.hann_window(_N_FFT, device=wav_16k.device)
    spec = torch.stft(wav_16k[None], _N_FFT, _HOP, _N_FFT, window=window, center=True, return_complex=True).abs()
    return torch.log(torch.clamp(mel_basis @ spec, min=1e-5))


def compute_rmvpe_f0_from_salience(salience: np.ndarray, threshold: float = RMVPE_THRESHOLD) -> np.ndarray:
    """Decode salience ``[F, 360]`` to f0 ``[F]`` Hz: local weighted average of 9 bins around the argmax.

    Frames whose maximum salience is ``<= threshold`` are unvoiced (0 Hz).
    """
    salience = np.asarray(salience, dtype=np.float32)
    cents_mapping = np.pad(20.0 * np.arange(360) + RMVPE_CENTS_OFFSET, (4, 4))
    center = np.argmax(salience, axis=1) + 4
    padded = np.pad(salience, ((0, 0), (4, 4)))
    idx = center[:, None] + np.arange(-4, 5)[None, :]
    window = np.take_along_axis(padded, idx, axis=1)
    weight_sum = window.sum(axis=1)
    cents = (window * cents_mapping[idx]).sum(axis=1) / np.maximum(weight_sum, 1e-12)
    cents[salience.max(axis=1) <= threshold] = 0.0
    f0 = 10.0 * 2.0 ** (cents / 1200.0)
    f0[cents == 0.0] = 0.0
    return f0.astype(np.float32)


class RmvpePitchExtractor:
    """:class:`~rvc_ray.features.pitch.PitchExtractor` backed by RMVPE (a loaded or given network)."""

    def __init__(
        self, network: torch.nn.Module, *, f0_min: float, f0_max: float, device: str = "cpu", description: str = "rmvpe"
    ):
        self.network = network.to(device).eval()
        self.device = device
        self.f0_min = f0_min
        self.f0_max = f0_max
        self.description = description

    def compute_f0(self, wav_16k: np.ndarray) -> np.ndarray:
        """``[N]`` float32 at 16 kHz -> f0 ``[N//160 + 1]`` float32 Hz, 0 = unvoiced."""
        import torch

        wav = torch.tensor(np.asarray(wav_16k, dtype=np.float32), device=self.device)
        with torch.inference_mode():
            mel = compute_rmvpe_log_mel(wav)
            n_frames = mel.shape[-1]
            n_pad = 32 * ((n_frames - 1) // 32 + 1) - n_frames
            mel = torch.nn.functional.pad(mel, (0, n_pad), mode="constant")
            salience = self.network(mel)[0, :n_frames].float().cpu().numpy()
        f0 = compute_rmvpe_f0_from_salience(salience)
        f0[(f0 < self.f0_min)] = 0.0
        return np.minimum(f0, self.f0_max).astype(np.float32)
