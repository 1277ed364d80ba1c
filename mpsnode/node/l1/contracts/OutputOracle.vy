# pragma version 0.4.3
# pragma evm-version cancun
"""
@title mpsnode output oracle
@notice The sequencer posts (l2_height, output_root) here; an output finalizes
        `CHALLENGE_PERIOD` seconds after it was posted unless a bonded verifier challenges
        it in that time. A challenged output is decided by the verifier committee: the first
        root `QUORUM` admitted verifiers attest stands. If it is not the posted root, it
        replaces it, the sequencer's bond goes to the challenger and the sequencer is halted;
        if it is, the challenger's bond goes to the sequencer. The portal pays withdrawals
        only against finalized outputs. docs/SETTLEMENT.md has the rules.
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


struct Challenge:
    challenger: address
    report: bytes32
    opened_at: uint256
    status: uint256


event VerifierAdmitted:
    verifier: indexed(address)
    bond: uint256


event OutputChallenged:
    index: indexed(uint256)
    challenger: indexed(address)
    root: bytes32
    report: bytes32


event OutputAttested:
    index: indexed(uint256)
    verifier: indexed(address)
    root: bytes32
    votes: uint256


event ChallengeResolved:
    index: indexed(uint256)
    upheld: bool
    root: bytes32
    paid_to: address
    amount: uint256


event OutputPosted:
    index: indexed(uint256)
    l2_height: indexed(uint256)
    root: bytes32
    l1_origin: uint256
    deposits: uint256
    posted_at: uint256


OPEN: constant(uint256) = 1
UPHELD: constant(uint256) = 2
REJECTED: constant(uint256) = 3

SEQUENCER: public(immutable(address))
PORTAL: public(immutable(address))
CHALLENGE_PERIOD: public(immutable(uint256))
ADMIN: public(immutable(address))  # admits verifiers to the committee (docs/SETTLEMENT.md: trust)
VERIFIER_BOND: public(immutable(uint256))
QUORUM: public(immutable(uint256))

bond: public(uint256)
halted: public(bool)
output_count: public(uint256)
outputs: public(HashMap[uint256, Output])
admitted: public(HashMap[address, bool])
verifier_bond: public(HashMap[address, uint256])
verifier_count: public(uint256)
challenges: public(HashMap[uint256, Challenge])
attestation: public(HashMap[uint256, HashMap[address, bytes32]])
votes: public(HashMap[uint256, HashMap[bytes32, uint256]])


@deploy
@payable
def __init__(
    sequencer: address, portal: address, challenge_period: uint256, verifier_bond: uint256, quorum: uint256
):
    assert sequencer != empty(address), "oracle: no sequencer"
    assert msg.value > 0, "oracle: the sequencer's bond is zero"
    assert verifier_bond > 0, "oracle: the verifiers' bond is zero"
    assert quorum > 0, "oracle: the quorum is zero"
    SEQUENCER = sequencer
    PORTAL = portal
    CHALLENGE_PERIOD = challenge_period
    ADMIN = msg.sender
    VERIFIER_BOND = verifier_bond
    QUORUM = quorum
    self.bond = msg.value


@external
def admit(verifier: address):
    """@notice Admit `verifier` to the committee (the admin only); it then bonds with `register`."""
    assert msg.sender == ADMIN, "oracle: only the admin admits verifiers"
    assert verifier != SEQUENCER and verifier != empty(address), "oracle: not a verifier address"
    self.admitted[verifier] = True


@external
@payable
def register():
    """@notice An admitted verifier bonds exactly VERIFIER_BOND and may then challenge and attest."""
    assert self.admitted[msg.sender], "oracle: not admitted to the verifier committee"
    assert self.verifier_bond[msg.sender] == 0, "oracle: already registered"
    assert msg.value == VERIFIER_BOND, "oracle: the bond is not VERIFIER_BOND"
    self.verifier_bond[msg.sender] = msg.value
    self.verifier_count += 1
    log VerifierAdmitted(verifier=msg.sender, bond=msg.value)


@external
def challenge(index: uint256, root: bytes32, report: bytes32):
    """
    @notice Contest output `index`: the caller, a registered verifier, computed `root` for its
            height; `report` is the hash of its divergence report and replay bundle. The output
            no longer finalizes by time; the committee decides it (`attest`).
    """
    assert self.verifier_bond[msg.sender] > 0, "oracle: not a registered verifier"
    assert index < self.output_count, "oracle: unknown output"
    assert block.timestamp < self.outputs[index].posted_at + CHALLENGE_PERIOD, "oracle: the challenge period is over"
    assert self.challenges[index].status == 0, "oracle: output already challenged"
    assert root != self.outputs[index].root, "oracle: the challenge names the posted root"
    self.challenges[index] = Challenge(challenger=msg.sender, report=report, opened_at=block.timestamp, status=OPEN)
    log OutputChallenged(index=index, challenger=msg.sender, root=root, report=report)
    self._attest(index, root)


@external
def attest(index: uint256, root: bytes32):
    """@notice A registered verifier attests the root it computed for challenged output `index`."""
    assert self.verifier_bond[msg.sender] > 0, "oracle: not a registered verifier"
    assert index < self.output_count, "oracle: unknown output"
    assert self.challenges[index].status == OPEN, "oracle: output not under an open challenge"
    self._attest(index, root)


@internal
def _attest(index: uint256, root: bytes32):
    assert root != empty(bytes32), "oracle: no root"
    assert self.attestation[index][msg.sender] == empty(bytes32), "oracle: already attested"
    self.attestation[index][msg.sender] = root
    count: uint256 = self.votes[index][root] + 1
    self.votes[index][root] = count
    log OutputAttested(index=index, verifier=msg.sender, root=root, votes=count)
    if count >= QUORUM:
        self._resolve(index, root)


@internal
def _resolve(index: uint256, root: bytes32):
    challenge: Challenge = self.challenges[index]
    paid_to: address = empty(address)
    amount: uint256 = 0
    upheld: bool = root != self.outputs[index].root
    if upheld:
        # the committee's root stands: it replaces the posted one, the bond goes to the challenger
        self.outputs[index].root = root
        self.challenges[index].status = UPHELD
        self.halted = True
        paid_to = challenge.challenger
        amount = self.bond
        self.bond = 0
    else:
        # the posted root stands: the challenger loses its bond to the sequencer and leaves
        self.challenges[index].status = REJECTED
        paid_to = SEQUENCER
        amount = self.verifier_bond[challenge.challenger]
        self.verifier_bond[challenge.challenger] = 0
        self.verifier_count -= 1
    log ChallengeResolved(index=index, upheld=upheld, root=root, paid_to=paid_to, amount=amount)
    if amount > 0:
        raw_call(paid_to, b"", value=amount)


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
    assert not self.halted, "oracle: the sequencer is halted (an upheld challenge)"
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
    status: uint256 = self.challenges[index].status
    if status == OPEN:
        return False  # decided by the committee, not by time
    if status == UPHELD:
        return True  # the committee's root, final as soon as it stands
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
    assert self.challenges[index].status != OPEN, "oracle: output under challenge"
    assert self._finalized(index), "oracle: output not finalized"
    return self.outputs[index].root
