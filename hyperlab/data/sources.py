"""The published files each dataset is built from: canonical URLs and sha256 digests.

Digests of PTB, MNIST and Tiny Shakespeare are those of the byte-identical shared copies
(``SHA256SUMS`` beside them); CIFAR-10, enwik8 and text8 are the widely pinned digests of the
official archives (170,498,071 / 36,445,475 / 31,344,016 bytes).
"""

from __future__ import annotations

from hyperlab.data.download import RemoteFile

# Mikolov's simple-examples.tgz (http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz)
# holds data/ptb.char.*.txt; the same blobs are served one by one from a pinned public tree.
_PTB_TREE = ("https://raw.githubusercontent.com/fmromeiro/tdnn-ptb/"
             "e460ea5536f6d695ace8e6ab8624a6a1f201a48d/data/simple-examples/data")
_PTB_SHA256 = {
    "train": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
    "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
    "test": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
}
PTB_CHAR = {split: RemoteFile(f"ptb.char.{split}.txt", (f"{_PTB_TREE}/ptb.char.{split}.txt",), sha)
            for split, sha in _PTB_SHA256.items()}

TINY_SHAKESPEARE = RemoteFile(
    "input.txt",
    ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",),
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")

ENWIK8 = RemoteFile("enwik8.zip", ("http://mattmahoney.net/dc/enwik8.zip",),
                    "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc")
TEXT8 = RemoteFile("text8.zip", ("http://mattmahoney.net/dc/text8.zip",),
                   "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232")

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist")
_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST = {name: RemoteFile(name, tuple(f"{mirror}/{name}" for mirror in _MNIST_MIRRORS), sha)
         for name, sha in _MNIST_SHA256.items()}

CIFAR10 = RemoteFile("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                     "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
