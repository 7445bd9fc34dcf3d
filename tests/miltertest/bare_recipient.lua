-- A bare recipient on abc.example's own address becomes alice@abc.example.
dofile(common)
local conn = connect("127.0.0.2", "MTBARE")
mail_from(conn, SMFIR_CONTINUE, "<sender@x.test>")
rcpt_to(conn, "<alice>", SMFIR_CONTINUE)
message(conn, {{"Subject", "hello"}}, "Hello.\r\n")
expect(conn, SMFIR_CONTINUE, "end of message")
if not mt.eom_check(conn, MT_RCPTDELETE, "<alice>") then
  fail("<alice> was not deleted")
end
if not mt.eom_check(conn, MT_RCPTADD, "<alice@abc.example>") then
  fail("<alice@abc.example> was not added")
end
passed(conn)
