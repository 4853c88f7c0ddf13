"""The one way tables are spelled: cells, intervals, fixed-width rows."""

def test_table_cells_are_spelled_one_way():
    from tinytitan.tables import fixed_row, format_cell, interval

    assert interval([0.37, 0.5172]) == "37.0-51.7%" and interval((0.0, 1.0)) == "0.0-100.0%"
    assert format_cell(None, "{:.1f}") == "-" and format_cell(2.345, "{:.1f}") == "2.3"
    assert fixed_row(["a-long-name", "37.0-51.7%"], [-6, 12]) == "a-long   37.0-51.7%"
