# pragma version 0.4.3
# pragma evm-version cancun
"""
@title mpsnode output oracle
@notice The sequencer posts (l2_height, output_root) here; an output finalizes
        `CHALLENGE_PERIOD` seconds after it was posted. The portal pays withdrawals
        only against finalized outputs. docs/SETTLEMENT.md has the rules.
@dev Challenges are settlement part 2: every finality decision goes through
     `_finalized`, the one place a challenge will be able to hold an output back.
"""

interface Portal:
    def deposit_count() -> uint256: view
    def deposit_block(index: uint256) -> uint256: view
    def DEPOSIT_WINDOW() -> uint256: view


struct Output:
    root: bytes32
    l2_height: uint256
    l1_origin: uint256
    deposits: uint256
    posted_at: uint256


event OutputPosted:
    index: indexed(uint256)
    l2_height: indexed(uint256)
    root: bytes32
    l1_origin: uint256
    deposits: uint256
    posted_at: uint256


SEQUENCER: public(immutable(address))
PORTAL: public(immutable(address))
CHALLENGE_PERIOD: public(immutable(uint256))

bond: public(uint256)
output_count: public(uint256)
outputs: public(HashMap[uint256, Output])


@deploy
@payable
def __init__(sequencer: address, portal: address, challenge_period: uint256):
    assert sequencer != empty(address), "oracle: no sequencer"
    assert msg.value > 0, "oracle: the sequencer's bond is zero"
    SEQUENCER = sequencer
    PORTAL = portal
    CHALLENGE_PERIOD = challenge_period
    self.bond = msg.value


@external
def post_output(l2_height: uint256, root: bytes32, l1_origin: uint256, deposits: uint256):
    """
    @notice Post the output root of L2 block `l2_height`, whose header names L1 block
            `l1_origin` and whose state has taken in the first `deposits` deposits.
    @dev Refuses an output whose origin is more than the deposit window old, or that leaves
         out a deposit overdue at its own L1 origin: the L2 rule of forced inclusion, enforced
         here on what the sequencer claims (settlement part 2 makes the claims contestable).
    """
    assert msg.sender == SEQUENCER, "oracle: only the sequencer posts outputs"
    count: uint256 = self.output_count
    if count > 0:
        last: Output = self.outputs[count - 1]
        assert l2_height > last.l2_height, "oracle: height not above the last output"
        assert l1_origin >= last.l1_origin, "oracle: L1 origin before the last output's"
        assert deposits >= last.deposits, "oracle: fewer deposits than the last output"
    else:
        assert l2_height > 0, "oracle: height not above the last output"
    assert l1_origin <= block.number, "oracle: L1 origin not yet mined"
    portal: Portal = Portal(PORTAL)
    window: uint256 = staticcall portal.DEPOSIT_WINDOW()
    # A fresh origin: without it a sequencer could keep its origin still and no deposit would
    # ever fall due. With it, no output can be posted that leaves out a deposit older than
    # twice the window.
    assert l1_origin + window >= block.number, "oracle: L1 origin too old"
    assert deposits <= staticcall portal.deposit_count(), "oracle: more deposits than the portal has"
    if deposits > 0:
        assert staticcall portal.deposit_block(deposits - 1) <= l1_origin, "oracle: a deposit after the L1 origin"
    if deposits < staticcall portal.deposit_count():
        due: uint256 = staticcall portal.deposit_block(deposits) + window
        assert due > l1_origin, "oracle: an overdue deposit is left out"
    self.outputs[count] = Output(
        root=root, l2_height=l2_height, l1_origin=l1_origin, deposits=deposits, posted_at=block.timestamp
    )
    self.output_count = count + 1
    log OutputPosted(
        index=count, l2_height=l2_height, root=root, l1_origin=l1_origin, deposits=deposits,
        posted_at=block.timestamp
    )


@view
@internal
def _finalized(index: uint256) -> bool:
    # Settlement part 2 adds: and the output is not under challenge.
    return block.timestamp >= self.outputs[index].posted_at + CHALLENGE_PERIOD


@view
@external
def is_finalized(index: uint256) -> bool:
    """@notice Whether output `index` exists and has finalized."""
    return index < self.output_count and self._finalized(index)


@view
@external
def finalized_root(index: uint256) -> bytes32:
    """@notice The root of output `index`; reverts unless it exists and has finalized."""
    assert index < self.output_count, "oracle: unknown output"
    assert self._finalized(index), "oracle: output not finalized"
    return self.outputs[index].root
