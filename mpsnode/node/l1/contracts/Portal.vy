# pragma version 0.4.3
# pragma evm-version cancun
"""
@title mpsnode staking portal
@notice Locks ETH for the L2 (`deposit`) and pays proven withdrawals (`prove_withdrawal`).
        L2 amounts are whole gwei. docs/SETTLEMENT.md has the rules.
"""

interface Oracle:
    def finalized_root(index: uint256) -> bytes32: view


event Deposited:
    index: indexed(uint256)
    recipient: indexed(bytes32)
    sender: indexed(address)
    amount: uint256


event WithdrawalPaid:
    index: indexed(uint256)
    recipient: indexed(address)
    amount: uint256
    output_index: uint256


WEI_PER_UNIT: constant(uint256) = 10**9
MAX_L2_SUPPLY: constant(uint256) = 2**63 - 1
TREE_DEPTH: constant(uint256) = 32
OUTPUT_VERSION: constant(bytes32) = empty(bytes32)

ORACLE: public(immutable(address))
DEPOSIT_WINDOW: public(immutable(uint256))

deposit_count: public(uint256)
deposit_block: public(HashMap[uint256, uint256])
deposited: public(uint256)
paid: public(uint256)
withdrawal_paid: public(HashMap[uint256, bool])


@deploy
def __init__(oracle: address, deposit_window: uint256):
    assert deposit_window > 0, "portal: deposit window is zero"
    ORACLE = oracle
    DEPOSIT_WINDOW = deposit_window


@external
@payable
def deposit(recipient: bytes32):
    """
    @notice Lock msg.value for L2 address `recipient` (an ed25519 public key). The L2 must
            credit it, in index order, within DEPOSIT_WINDOW L1 blocks.
    """
    assert recipient != empty(bytes32), "portal: no recipient"
    assert msg.value > 0, "portal: nothing deposited"
    assert msg.value % WEI_PER_UNIT == 0, "portal: the amount is not a whole number of gwei"
    amount: uint256 = msg.value // WEI_PER_UNIT
    assert self.deposited + amount <= MAX_L2_SUPPLY, "portal: the L2 supply would pass its limit"
    index: uint256 = self.deposit_count
    self.deposit_block[index] = block.number
    self.deposit_count = index + 1
    self.deposited += amount
    log Deposited(index=index, recipient=recipient, sender=msg.sender, amount=amount)


@view
@external
def withdrawal_leaf(index: uint256, recipient: address, amount: uint256, sender: bytes32) -> bytes32:
    """@notice The withdrawal tree's leaf of one L2 withdrawal record."""
    return keccak256(abi_encode(index, recipient, amount, sender))


@external
def prove_withdrawal(
    output_index: uint256,
    state_root: bytes32,
    withdrawals_root: bytes32,
    block_hash: bytes32,
    index: uint256,
    recipient: address,
    amount: uint256,
    sender: bytes32,
    proof: bytes32[TREE_DEPTH],
):
    """
    @notice Pay L2 withdrawal `index` to `recipient`, once: `proof` is its branch in the
            withdrawals tree committed by finalized output `output_index`.
    """
    root: bytes32 = staticcall Oracle(ORACLE).finalized_root(output_index)
    preimage: bytes32 = keccak256(concat(OUTPUT_VERSION, state_root, withdrawals_root, block_hash))
    assert preimage == root, "portal: the output does not match its root"
    assert index < 2**TREE_DEPTH, "portal: withdrawal index out of range"
    assert not self.withdrawal_paid[index], "portal: withdrawal already paid"
    node: bytes32 = keccak256(abi_encode(index, recipient, amount, sender))
    for level: uint256 in range(TREE_DEPTH):
        if (index >> level) & 1 == 1:
            node = keccak256(concat(proof[level], node))
        else:
            node = keccak256(concat(node, proof[level]))
    assert node == withdrawals_root, "portal: the withdrawal is not in the output"
    self.withdrawal_paid[index] = True
    self.paid += amount
    log WithdrawalPaid(index=index, recipient=recipient, amount=amount, output_index=output_index)
    raw_call(recipient, b"", value=amount * WEI_PER_UNIT)
